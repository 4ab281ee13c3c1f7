"""Reading mount tables (``/proc/PID/mountinfo``) and mounting through mount(2) directly."""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of a mountinfo table: where something is mounted and what."""

    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo table, in the order the kernel lists them (parents first)."""
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2:
            mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def mounts_of(pid: int | str = "self") -> list[Mount]:
    return parse_mountinfo(Path(f"/proc/{pid}/mountinfo").read_text())


def is_under(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or inside it (path strings, no symlinks followed)."""
    top = top.rstrip("/") or "/"
    return path == top or path.startswith(top + "/") or top == "/"


def mount_points_under(top: str, mounts: list[Mount]) -> list[str]:
    """Mount points at or below ``top``, deepest (last mounted) first: the order to unmount."""
    return [m.mount_point for m in reversed(mounts) if is_under(m.mount_point, top)]


def mount_points_everywhere() -> set[str]:
    """Mount points of every mount namespace on the machine (as each namespace's processes
    see them).

    Removing a directory that is a mount point elsewhere would silently detach that mount
    (another lab's host, say), so callers check this first.
    """
    seen: set[str] = set()
    points: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{entry}/ns/mnt")
            if ns not in seen:
                seen.add(ns)
                points.update(m.mount_point for m in mounts_of(entry))
        except OSError:
            continue
    return points


class Mounter:
    """mount(2) and umount2(2) through libc (sources like /proc/self/fd/N work as such)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def mount(
        self, source: str, target: str, fstype: str | None, flags: int, data: str = ""
    ) -> None:
        rc = self._libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")

    def bind(self, source: str, target: str) -> None:
        self.mount(source, target, None, MS_BIND | MS_REC)

    def tmpfs(self, target: str, mode: str) -> None:
        self.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")

    def detach(self, target: str) -> None:
        """Lazily unmount ``target``; a path that is no longer mounted is fine."""
        self._libc.umount2(target.encode(), MNT_DETACH)
