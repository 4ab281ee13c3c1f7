"""Supervision of the per-container ``bismuth-provider`` processes.

Contract:
- ``start`` launches the container's provider on its host-side address and returns once the
  provider answers ``/healthz`` with the container's token; it raises ``ProviderFailed`` (and
  leaves no process) if it does not within ``ready_timeout``.
- A provider that dies is started again, after a backoff that doubles up to a cap; a
  provider that stayed up for ``STABLE_AFTER`` seconds starts the backoff over.
- Providers run in their own session, so they outlive the agent: ``adopt`` (after an agent
  restart) takes over the recorded process if it is still the provider it started, and
  starts a new one only if it is gone. ``close`` stops watching without stopping them.
- ``stop`` (SIGTERM, a grace period, SIGKILL) is safe for a container that has no provider.

Exits are seen through a pidfd, which works for processes this agent did not start.
The provider's settings go into its environment, never its command line; the token goes
down its stdin, so a provider running as an unprivileged user needs no access to the agent's
files. It starts in a cgroup of its own (memory and pids limits) as the given user, with no
supplementary groups and no new privileges: a shell moves itself into the cgroup and execs
``setpriv``, which execs the provider, so the PID the agent records is the provider's.
:meth:`ProviderSupervisor.asker` tells which container's provider a PID is (secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bismuth_core.config import ConfigError
from bismuth_core.errors import BismuthError
from bismuth_core.eventloop import reraise_if_cancelling

from .cgroups import Cgroup, CgroupError, Limits
from .secretserver import Asker
from .zygote import ProviderZygote, ZygoteUnavailable

log = logging.getLogger(__name__)

PID_FILE = "provider.pid"
LOG_FILE = "provider.log"
STABLE_AFTER = 30.0
READY_POLL = 0.005  # seconds between a starting provider's health checks
LOG_MAX_BYTES = 1 << 20  # a provider's log, kept in two halves (provider.log and .log.1)
PROCESS_NAMES = (b"bismuth_provider", b"bismuth-provider")  # in the provider's command line


class ProviderFailed(BismuthError):
    """The provider did not come up; the message says why."""


@dataclass(frozen=True)
class Launch:
    """Everything needed to (re)start one container's provider."""

    container_id: uuid.UUID
    directory: Path  # the container's state directory (token file, pid file, log)
    address: str  # host-side veth address
    port: int
    token: str
    env: dict[str, str]  # BISMUTH_* settings of the provider
    user: tuple[int, int] | None = None  # uid, gid to run as (None: the agent's own)
    function_id: uuid.UUID | None = None
    cgroup: Cgroup | None = None  # made (with ``limits``) before it starts
    limits: Limits | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass
class _Watched:
    launch: Launch
    pid: int
    started: float
    fd: int = -1
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0


class ProviderSupervisor:
    def __init__(
        self,
        command: tuple[str, ...] = (),
        ready_timeout: float = 15.0,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        zygote: ProviderZygote | None = None,
    ) -> None:
        self.command = command or default_command()
        self.zygote = zygote
        self.ready_timeout = ready_timeout
        self.backoff, self.backoff_cap = backoff, backoff_cap
        self._watched: dict[uuid.UUID, _Watched] = {}
        self._restarts: dict[uuid.UUID, asyncio.Task[None]] = {}

    def pid(self, cid: uuid.UUID) -> int | None:
        watched = self._watched.get(cid)
        return watched.pid if watched else None

    def asker(self, pid: int) -> Asker | None:
        """The container whose provider ``pid`` is (one this agent watches), if any."""
        for cid, watched in self._watched.items():
            launch = watched.launch
            if watched.pid == pid and launch.function_id is not None:
                return Asker(cid, launch.function_id, launch.token)
        return None

    def prepare(self) -> None:
        """Start the zygote, if there is one: it imports while the agent starts."""
        if self.zygote is not None:
            self.zygote.start()

    async def start(self, launch: Launch) -> None:
        """Launch the provider and wait until it answers; ``ProviderFailed`` if it does not."""
        pid = await self._spawn(launch)
        watched = self._watch(launch, pid)
        try:
            await self._ready(watched)
        except ProviderFailed:
            await self.stop(launch.container_id, grace=1.0)
            raise

    async def adopt(self, launch: Launch) -> None:
        """Keep the provider a previous agent started, or start one if it is gone."""
        pid = recorded_pid(launch.directory)
        if pid is None:
            await self.start(launch)
            return
        self._watch(launch, pid)
        log.info("adopted provider %d", pid, extra={"container_id": launch.container_id})

    async def stop(self, cid: uuid.UUID, directory: Path | None = None, grace: float = 5.0) -> None:
        """End the container's provider (watched, or recorded in ``directory``)."""
        restart = self._restarts.pop(cid, None)
        if restart:
            restart.cancel()
        watched = self._watched.get(cid)
        if watched is None and directory is not None:
            pid = recorded_pid(directory)
            if pid is not None:
                launch = Launch(cid, directory, "", 0, "", {})
                watched = self._watch(launch, pid)
        if watched is None:
            return
        self._watched.pop(cid, None)  # its exit is no longer a failure
        with contextlib.suppress(ProcessLookupError):
            os.kill(watched.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(watched.exited.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(watched.pid, signal.SIGKILL)
            await asyncio.wait_for(watched.exited.wait(), 5.0)
        (watched.launch.directory / PID_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop watching (the agent is stopping); the providers keep running."""
        for task in self._restarts.values():
            task.cancel()
        self._restarts.clear()
        if self.zygote is not None:
            self.zygote.close()
        loop = asyncio.get_running_loop()
        for watched in self._watched.values():
            if watched.fd >= 0:
                loop.remove_reader(watched.fd)
                os.close(watched.fd)
                watched.fd = -1
        self._watched.clear()

    # --- processes ------------------------------------------------------------------------

    async def _spawn(self, launch: Launch) -> int:
        """Fork the provider from the zygote; without one (or if it fails), run it."""
        if self.zygote is not None:
            try:
                return await self._fork(launch, self.zygote)
            except (ZygoteUnavailable, CgroupError, OSError) as exc:
                reraise_if_cancelling(exc)
                why = exc.message if isinstance(exc, BismuthError) else repr(exc)
                log.warning(
                    "provider zygote: %s; running the provider on its own",
                    why,
                    extra={"container_id": launch.container_id},
                )
        return self._run(launch)

    async def _fork(self, launch: Launch, zygote: ProviderZygote) -> int:
        """A provider forked by the zygote, moved into its cgroup before it may run."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **launch.env}
        pid, go = await zygote.fork(env, launch.token, launch.directory / LOG_FILE)
        try:
            if launch.cgroup is not None and launch.limits is not None:
                launch.cgroup.create(launch.limits)
                launch.cgroup.add(pid)
            os.write(go, b"1")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise
        finally:
            os.close(go)
        _record_pid(launch.directory, pid)
        log.info("forked provider %d", pid, extra={"container_id": launch.container_id})
        return pid

    def _run(self, launch: Launch) -> int:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **launch.env}
        with open(launch.directory / LOG_FILE, "ab") as out:
            process = subprocess.Popen(
                self._argv(launch),
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError), process.stdin:
            process.stdin.write(launch.token.encode() + b"\n")  # a pipe holds it whole
        _record_pid(launch.directory, process.pid)
        log.info("started provider %d", process.pid, extra={"container_id": launch.container_id})
        return process.pid

    def _argv(self, launch: Launch) -> list[str]:
        """The provider's command, as its user, in its cgroup (made here, if it is not)."""
        if launch.cgroup is not None and launch.limits is not None:
            launch.cgroup.create(launch.limits)
        return confined(list(self.command), launch.user, launch.cgroup)

    def _watch(self, launch: Launch, pid: int) -> _Watched:
        watched = _Watched(launch, pid, time.monotonic())
        try:
            watched.fd = os.pidfd_open(pid)
        except ProcessLookupError:
            watched.exited.set()
            return watched
        self._watched[launch.container_id] = watched
        asyncio.get_running_loop().add_reader(watched.fd, self._on_exit, watched)
        return watched

    def _on_exit(self, watched: _Watched) -> None:
        asyncio.get_running_loop().remove_reader(watched.fd)
        os.close(watched.fd)
        watched.fd = -1
        code = _reap(watched.pid)
        watched.exited.set()
        cid = watched.launch.container_id
        if self._watched.get(cid) is not watched:
            return  # stopped on purpose, or replaced
        del self._watched[cid]
        ran = time.monotonic() - watched.started
        failures = 0 if ran >= STABLE_AFTER else watched.failures + 1
        delay = min(self.backoff_cap, self.backoff * 2 ** max(failures - 1, 0))
        log.warning(
            "provider %d exited (%s) after %.1f s; starting it again in %.1f s",
            watched.pid,
            code,
            ran,
            delay,
            extra={"container_id": cid},
        )
        self._restarts[cid] = asyncio.create_task(self._restart(watched.launch, delay, failures))

    async def _restart(self, launch: Launch, delay: float, failures: int) -> None:
        await asyncio.sleep(delay)  # the backoff itself, not a wait for a condition
        self._restarts.pop(launch.container_id, None)
        try:
            pid = await self._spawn(launch)
            watched = self._watch(launch, pid)
            watched.failures = failures
            await self._ready(watched)
        except (ProviderFailed, OSError) as exc:
            log.warning(
                "provider restart failed: %s", exc, extra={"container_id": launch.container_id}
            )

    async def _ready(self, watched: _Watched) -> None:
        launch = watched.launch
        headers = {"Authorization": f"Bearer {launch.token}"}
        deadline = time.monotonic() + self.ready_timeout
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                if watched.exited.is_set():
                    raise ProviderFailed(f"the provider exited at start; see {LOG_FILE}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{launch.url}/healthz", headers=headers) as response:
                        if response.status == 200:
                            return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watched.exited.wait(), READY_POLL)
        raise ProviderFailed(
            f"the provider did not answer on {launch.url} within {self.ready_timeout} s"
        )


def default_command() -> tuple[str, ...]:
    """The provider as this Python runs it."""
    return (sys.executable, "-m", "bismuth_provider")


def confined(argv: list[str], user: tuple[int, int] | None, cgroup: Cgroup | None) -> list[str]:
    """``argv`` run as ``user`` (uid, gid; no supplementary groups, no new privileges) in
    ``cgroup``, which a shell joins before it execs the rest (same PID)."""
    if user is not None:
        uid, gid = user
        switch = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        argv = [*switch, "--no-new-privs", "--", *argv]
    if cgroup is not None:
        argv = cgroup.join_command(argv)
    return argv


def cap_log(directory: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
    """Keep a provider's log under ``max_bytes``: past half of it, the log becomes
    ``provider.log.1`` and starts again (the provider appends, so it writes on at the start)."""
    current = directory / LOG_FILE
    try:
        size = current.stat().st_size
    except FileNotFoundError:
        return
    if size > max_bytes // 2:
        shutil.copyfile(current, directory / f"{LOG_FILE}.1")
        os.truncate(current, 0)


def _record_pid(directory: Path, pid: int) -> None:
    path = directory / PID_FILE
    path.write_text(f"{pid} {_start_time(pid)}\n")


def recorded_pid(directory: Path) -> int | None:
    """The recorded provider's PID if that very process still runs (not a reused PID)."""
    try:
        pid_text, start = (directory / PID_FILE).read_text().split()
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if _start_time(pid) != start or not any(n in cmdline for n in PROCESS_NAMES):
        return None
    return pid


def _start_time(pid: int) -> str:
    """When the process started (clock ticks since boot): with the PID, names it uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rpartition(")")[2].split()[19]


def _reap(pid: int) -> str:
    """Collect the exit status if the process was our child; describe how it ended."""
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "not our child"
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"code {os.waitstatus_to_exitcode(status)}" if status else "code 0"


def provider_identity(name: str) -> tuple[int, int] | None:
    """uid and gid of the user providers run as (``None``: the agent's own)."""
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"config provider_user: no user named {name!r} on this host") from None
    return entry.pw_uid, entry.pw_gid


def local_storage_root(url: str, group: str, owner: tuple[int, int]) -> None:
    """Make a ``local://`` storage root exist and belong to the providers' user, and the
    group's data too (left by providers that ran as another user before)."""
    parts = urlsplit(url)
    if parts.scheme != "local":
        return
    root = Path(parts.path)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (root.stat().st_uid, root.stat().st_gid) != owner:
        os.chown(root, *owner)
    data = root / group
    if data.exists() and (data.stat().st_uid, data.stat().st_gid) != owner:
        _chown_tree(data, owner)


def _chown_tree(top: Path, owner: tuple[int, int]) -> None:
    os.chown(top, *owner)
    for directory, names, filenames in os.walk(top):
        for name in (*names, *filenames):
            os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)
