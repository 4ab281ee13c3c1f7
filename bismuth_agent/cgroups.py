"""cgroups the agent makes itself (each provider's): a memory and a pids limit; and a
container's CPU quota, changed in place once it serves (runc made that cgroup).

Containers get their cgroups from runc; a provider is a host process the agent starts, so
the agent makes its cgroup, ``<agent cgroup parent>/providers/<container id>``, in either
layout the host has: cgroup v2 (one unified tree: ``memory.max``, ``memory.swap.max``,
``pids.max``, with the controllers enabled down the path) or v1 (the ``memory`` and ``pids``
hierarchies: ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` where swap is
accounted, ``pids.max``). A process joins by writing its own PID to each ``cgroup.procs``
before it execs (:meth:`Cgroup.join_command`), so nothing it allocates escapes the limits.
``remove`` is safe when the cgroup never existed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from bismuth_core.errors import BismuthError

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")


class CgroupError(BismuthError):
    """A cgroup could not be made (the message names the file)."""


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes, swap included
    pids: int


def unified(root: Path = ROOT) -> bool:
    """Whether the host runs cgroup v2 only (no v1 ``memory`` hierarchy)."""
    return (root / "cgroup.controllers").exists() and not (root / "memory").is_dir()


class Cgroup:
    """One cgroup, by its path below the hierarchies' roots (``/bismuth-10.0.0.5/...``)."""

    def __init__(self, path: str, root: Path = ROOT) -> None:
        self.path = path.strip("/")
        self.root = root
        self.v2 = unified(root)

    def directories(self) -> list[Path]:
        """Its directory in each hierarchy it lives in."""
        if self.v2:
            return [self.root / self.path]
        return [self.root / controller / self.path for controller in CONTROLLERS]

    def create(self, limits: Limits) -> None:
        """Make it (and its parents) and set ``limits``; idempotent."""
        try:
            if self.v2:
                self._enable_controllers()
            for directory in self.directories():
                directory.mkdir(parents=True, exist_ok=True)
            for name, value in self._limit_files(limits):
                name.write_text(f"{value}\n")
        except OSError as exc:
            raise CgroupError(f"cannot make cgroup {self.path}: {exc}") from None

    def _enable_controllers(self) -> None:
        """v2: a controller works in a cgroup only if every ancestor hands it down."""
        wanted = " ".join(f"+{c}" for c in CONTROLLERS)
        parts = Path(self.path).parts
        for depth in range(len(parts)):
            parent = self.root.joinpath(*parts[:depth])
            parent.mkdir(exist_ok=True)
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if not all(c in enabled for c in CONTROLLERS):
                (parent / "cgroup.subtree_control").write_text(wanted)

    def _limit_files(self, limits: Limits) -> list[tuple[Path, int | str]]:
        if self.v2:
            directory = self.root / self.path
            return [
                (directory / "memory.max", limits.memory),
                (directory / "memory.swap.max", 0),
                (directory / "pids.max", limits.pids),
            ]
        memory, pids = self.directories()
        files: list[tuple[Path, int | str]] = [(memory / "memory.limit_in_bytes", limits.memory)]
        if (memory / "memory.memsw.limit_in_bytes").exists():  # swap accounting is on
            files.append((memory / "memory.memsw.limit_in_bytes", limits.memory))
        files.append((pids / "pids.max", limits.pids))
        return files

    def join_command(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself (the same PID, exec'd) here."""
        procs = [str(d / "cgroup.procs") for d in self.directories()]
        moves = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs)))
        script = f'{moves} && shift {len(procs)} && exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *procs, *argv]

    def add(self, pid: int) -> None:
        """Move process ``pid`` here (made first, with :meth:`create`)."""
        try:
            for directory in self.directories():
                (directory / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            raise CgroupError(f"cannot move process {pid} into cgroup {self.path}: {exc}") from None

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def set_cpu_quota(self, quota: int, period: int) -> None:
        """Hold it to ``quota`` microseconds of CPU per ``period`` (runc made its ``cpu``
        controller; this changes the quota in place)."""
        try:
            if self.v2:
                (self.root / self.path / "cpu.max").write_text(f"{quota} {period}\n")
            else:
                directory = self.root / "cpu" / self.path
                (directory / "cpu.cfs_period_us").write_text(f"{period}\n")
                (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        except OSError as exc:
            raise CgroupError(f"cannot set the cpu quota of cgroup {self.path}: {exc}") from None

    def cpu_quota(self) -> tuple[int, int] | None:
        """Its CPU quota and period in microseconds; None if unlimited or unreadable."""
        try:
            if self.v2:
                quota, period = (self.root / self.path / "cpu.max").read_text().split()
            else:
                directory = self.root / "cpu" / self.path
                quota = (directory / "cpu.cfs_quota_us").read_text()
                period = (directory / "cpu.cfs_period_us").read_text()
            return (int(quota), int(period)) if int(quota) > 0 else None
        except (OSError, ValueError):
            return None

    def memory_limit(self) -> int | None:
        return self._memory_value("memory.max" if self.v2 else "memory.limit_in_bytes")

    def memory_usage(self) -> int | None:
        return self._memory_value("memory.current" if self.v2 else "memory.usage_in_bytes")

    def oom_kills(self) -> int:
        """Processes the kernel killed here for want of memory."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        directory = self.root / self.path if self.v2 else self.directories()[0]
        try:
            lines = (directory / name).read_text().splitlines()
        except OSError:
            return 0
        counts = dict(line.split() for line in lines if len(line.split()) == 2)
        return int(counts.get("oom_kill", 0))

    def _memory_value(self, name: str) -> int | None:
        directory = self.root / self.path if self.v2 else self.directories()[0]
        try:
            return int((directory / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """rmdir it in every hierarchy (it must hold no process); gone already is fine."""
        for directory in self.directories():
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(directory)
