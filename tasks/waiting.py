"""Shell for operations that wait: poll a condition until it holds, with a deadline.

A deploy that starts something waits for it to answer before the next step relies on it,
never for a fixed time. While it waits it prints a line every ``report`` seconds (the deploy
runs these commands with their output shown: :func:`tasks.local.streamed_shell`). On timeout
the command fails, says what it waited for and shows the end of the log that explains why.
"""

from __future__ import annotations

import shlex


def wait_until(
    check: str,
    timeout: float,
    what: str,
    log_file: str | None = None,
    interval: float = 0.2,
    report: int = 5,
) -> str:
    """Shell (POSIX sh): run ``check`` until it exits 0; after ``timeout`` seconds fail."""
    message = shlex.quote(f"{what}: not within {timeout:g} s")
    waiting = shlex.quote(f"waiting for {what}:")
    tail = f" tail -n 30 {shlex.quote(log_file)} >&2;" if log_file else ""
    return (
        f"start=$(date +%s); deadline=$(( start + {int(timeout + 0.999)} )); "
        f"next=$(( start + {report} )); "
        f"until {{ {check}; }}; do now=$(date +%s); "
        f'if [ "$now" -ge "$deadline" ]; then echo {message} >&2;{tail} exit 1; fi; '
        f'if [ "$now" -ge "$next" ]; then echo {waiting} "$(( now - start )) s"; '
        f"next=$(( now + {report} )); fi; "
        f"sleep {interval:g}; done"
    )
