"""Processes of lab hosts, by PID only: start times, children, kills, waits with deadlines."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Timeout(RuntimeError):
    """A condition did not hold before its deadline."""


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call ``check`` until it returns something truthy; raise :class:`Timeout` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int:
    """The process's start time in clock ticks after boot, or 0 if it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else 0


def running(pid: int, started: int = 0) -> bool:
    """Whether PID runs (not a zombie) and, if ``started`` is given, is the same process."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return not started or int(fields[19]) == started


def children(pid: int) -> list[int]:
    """Direct children of PID (all its threads), in the machine's PID namespace."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                found += [
                    int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                ]
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to PID; a process that is already gone is fine."""
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def netns_pids(netns_files: dict[str, str]) -> dict[str, list[int]]:
    """Running processes in each named network namespace (``{name: netns file}``)."""
    inodes: dict[tuple[int, int], str] = {}
    for name, path in netns_files.items():
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            inodes[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in netns_files}
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        owner = inodes.get((st.st_dev, st.st_ino))
        if owner is not None and running(int(entry)):
            found[owner].append(int(entry))
    return found


def all_gone(pids: Iterable[int]) -> bool:
    return not any(running(p) for p in pids)
