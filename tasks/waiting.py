"""Shell for operations that wait: poll a condition until it holds, with a deadline.

A deploy that starts something waits for it to answer before the next step relies on it,
never for a fixed time. On timeout the command fails, says what it waited for and shows the
end of the log that explains why.
"""

from __future__ import annotations

import shlex


def wait_until(
    check: str, timeout: float, what: str, log_file: str | None = None, interval: float = 0.2
) -> str:
    """Shell (POSIX sh): run ``check`` until it exits 0; after ``timeout`` seconds fail."""
    message = shlex.quote(f"{what}: not within {timeout:g} s")
    tail = f" tail -n 30 {shlex.quote(log_file)} >&2;" if log_file else ""
    return (
        f"deadline=$(( $(date +%s) + {int(timeout + 0.999)} )); "
        f"until {{ {check}; }}; do "
        f'if [ "$(date +%s)" -ge "$deadline" ]; then echo {message} >&2;{tail} exit 1; fi; '
        f"sleep {interval:g}; done"
    )
