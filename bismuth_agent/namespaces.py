"""A container's user and network namespaces, made by the agent before its task.

runc joins them (the spec names their files) instead of making them, so the container's
network is wired while its image, container and task are being made, and is ready by the
time the task exists: wiring is off the cold start's critical path.

The network namespace belongs to the container's user namespace, exactly as one runc makes
would: the container's root may mount its own sysfs (which shows its own interfaces only),
binding ports below 1024 and ``ping`` stay as they were, and nothing in the container holds
a capability over any namespace of the host. (A network namespace of the host's user
namespace would not do: runc could not mount ``/sys`` in it.)

A multi-threaded process cannot unshare a user namespace, so a helper does it: util-linux's
``unshare --user --net cat``. Once it echoes a line (it runs in the new namespaces), the agent
writes its uid and gid maps (the container's host id range), bind-mounts its two namespace
files at ``<state dir>/namespaces/<container id>/{user,net}`` and lets it exit; the files
keep the namespaces alive until :meth:`PreparedNamespaces.remove` unmounts them. Each call
is idempotent and "not found" is success when removing; blocking work runs on threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bismuth_core.errors import BismuthError

from .spec import IdMapping

log = logging.getLogger(__name__)

DIRECTORY = "namespaces"  # under the agent's state dir: <container id>/{user,net}
HELPER = ("unshare", "--user", "--net", "--", "cat")
KINDS = ("user", "net")  # namespace files under /proc/<pid>/ns/ that are kept
MS_BIND = 0x1000
MNT_DETACH = 0x2
NOT_MOUNTED = (errno.EINVAL, errno.ENOENT)  # umount2 of a plain file or of nothing


class NamespaceError(BismuthError):
    """The helper or the kernel refused to make a container's namespaces."""


@dataclass(frozen=True)
class NamespaceFiles:
    """Files of a container's prepared namespaces, by the runtime spec's namespace type."""

    user: str
    network: str

    def by_type(self) -> dict[str, str]:
        return {"user": self.user, "network": self.network}


class PreparedNamespaces:
    """User and network namespaces of this agent's containers, kept as files under ``top``."""

    def __init__(self, top: Path) -> None:
        self.top = top

    @classmethod
    def of_agent(cls, state_dir: str | Path) -> PreparedNamespaces:
        """Those of the agent whose state directory is ``state_dir``."""
        return cls(Path(state_dir) / DIRECTORY)

    def files(self, container_id: str) -> NamespaceFiles:
        """Where the container's namespaces are (or will be) kept."""
        directory = self.top / container_id
        return NamespaceFiles(str(directory / "user"), str(directory / "net"))

    async def prepare(self, container_id: str, ids: IdMapping) -> NamespaceFiles:
        """New namespaces whose ids map onto ``ids`` (leftovers of an earlier attempt go)."""
        return await asyncio.to_thread(self._prepare, container_id, ids)

    async def remove(self, container_id: str) -> None:
        """Let go of the container's namespaces (they end with its last process); idempotent."""
        await asyncio.to_thread(self._remove, container_id)

    async def keep_only(self, known: set[str]) -> int:
        """Remove the namespaces of containers not in ``known`` (an agent stopped mid-way,
        or every container's when its tasks are gone); how many containers had some."""
        found = sorted(self.top.iterdir()) if self.top.is_dir() else []
        gone = [d.name for d in found if d.name not in known]
        for name in gone:
            log.info("removing namespaces of a container that is gone: %s", name)
            await self.remove(name)
        return len(gone)

    def _prepare(self, container_id: str, ids: IdMapping) -> NamespaceFiles:
        self._remove(container_id)
        self.top.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.top / container_id).mkdir(mode=0o700)
        try:
            with _Helper() as helper:
                _map_ids(helper.pid, ids)
                for kind in KINDS:
                    _bind(f"/proc/{helper.pid}/ns/{kind}", self.top / container_id / kind)
        except BaseException:
            self._remove(container_id)
            raise
        return self.files(container_id)

    def _remove(self, container_id: str) -> None:
        directory = self.top / container_id
        for kind in KINDS:
            path = directory / kind
            if _libc().umount2(str(path).encode(), MNT_DETACH) != 0:
                code = ctypes.get_errno()
                if code not in NOT_MOUNTED:
                    raise OSError(code, f"umount {path}: {os.strerror(code)}")
            path.unlink(missing_ok=True)
        if directory.is_dir():
            directory.rmdir()


class _Helper:
    """``unshare --user --net cat``, waited for until it runs in its new namespaces and
    ended (its stdin closed) on leaving the block."""

    def __enter__(self) -> subprocess.Popen[bytes]:
        try:
            self.process = subprocess.Popen(
                HELPER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise NamespaceError(f"cannot run {HELPER[0]}: {exc}") from exc
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(b"\n")
            stdin.flush()
            echoed = stdout.read(1)  # cat runs only once unshare(2) is done
        except OSError:
            echoed = b""
        if echoed != b"\n":
            self.__exit__()
            stderr = self.process.stderr.read() if self.process.stderr else b""
            why = stderr.decode(errors="replace").strip() or "no answer"
            raise NamespaceError(f"{' '.join(HELPER)} failed: {why}")
        return self.process

    def __exit__(self, *_exc: object) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _map_ids(pid: int, ids: IdMapping) -> None:
    """Container ids 0..size-1 are the host's ``ids`` range in the helper's user namespace."""
    line = f"0 {ids.host_start} {ids.size}\n"
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{name}").write_text(line)


def _bind(source: str, target: Path) -> None:
    """Keep the namespace at ``source`` alive as the file ``target``."""
    target.touch(mode=0o600, exist_ok=False)
    if _libc().mount(source.encode(), str(target).encode(), None, MS_BIND, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount --bind {source} {target}: {os.strerror(code)}")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
