"""Steps the deploy takes on the machine it runs on, and long steps on hosts, with progress.

pyinfra runs deploy code to *prepare* operations, and stops there for ``--dry`` and before
asking for confirmation; only then does it *execute*. So deploy code never builds, generates
or writes anything while preparing: it only reads, to decide whether a step is needed, and
adds the step as an operation (``python.call``) that pyinfra lists among the detected changes
and runs when it executes. Such steps print a line per stage (or every few seconds while a
program runs silently), and so do the long waits on hosts.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.command import StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import python

HEARTBEAT = 10.0  # seconds of silence from a running program before a "still ..." line


def progress(line: str) -> None:
    """One progress line, with the host's prefix, as pyinfra prints its own."""
    logger.info(f"{host.print_prefix}{line}")


def control_step(name: str, needed: bool, run: Callable[[], object]) -> OperationMeta | None:
    """Add ``run`` as an operation run on this machine when pyinfra executes, if ``needed``.

    ``run`` may be added for several hosts: it must do its work once (lock, cache) and
    be a no-op after that.
    """
    if not needed:
        return None
    return python.call(name=name, function=run)


def run_with_progress(command: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run ``command`` here, printing its output lines as progress (and a line every
    :data:`HEARTBEAT` seconds of silence); its output, or :class:`OperationError`."""
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=HEARTBEAT)
        except queue.Empty:
            progress(f"{what}: still running ({time.monotonic() - started:.0f} s)")
            continue
        if line is None:
            break
        seen.append(line)
        progress(f"{what}: {line}")
    code = proc.wait()
    if code != 0:
        tail = "\n".join(seen[-20:])
        raise OperationError(f"{what} failed (exit {code}):\n{tail}")
    progress(f"{what}: done in {time.monotonic() - started:.0f} s")
    return "\n".join(seen)


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(str(line).rstrip("\n"))
    lines.put(None)


def streamed_shell(
    name: str, command: str, *, _if: Callable[[], bool] | None = None
) -> OperationMeta:
    """A shell command on the host whose output pyinfra prints as it comes (progress)."""

    def run() -> None:
        ok, output = host.run_shell_command(StringCommand(command), print_output=True)
        if not ok:
            tail = "\n".join(output.stderr_lines[-20:])
            raise OperationError(f"{name}: failed\n{tail}")

    return python.call(name=name, function=run, _if=_if)
