"""The agent's end of the provider zygote (``bismuth-provider --zygote``).

One zygote per agent has imported the provider once and forks one per container
(:mod:`bismuth_provider.zygote` says how). It runs like a provider: as the providers' user,
with no supplementary groups and no new privileges, in a cgroup of its own
(``<parent>/providers/zygote``) with the providers' limits, without the cluster key. The
agent starts it with its runtime and again on the next fork after it died; closing the
agent's end (agent stopped) ends it, never the providers it forked.

:meth:`ProviderZygote.fork` hands it a provider's settings, token and log file and returns
the new process's PID; the caller moves it into its cgroup, then lets it go. Anything that
goes wrong is :class:`ZygoteUnavailable`: the caller starts the provider the slow way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path

from bismuth_core.errors import BismuthError

from .cgroups import Cgroup, Limits

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 30.0  # seconds for the zygote to answer (its first answer waits for imports)
REPLY_MAX = 4096


class ZygoteUnavailable(BismuthError):
    """The zygote could not fork a provider; the message says why."""


class ProviderZygote:
    def __init__(
        self,
        argv: list[str],
        log_file: Path,
        cgroup: Cgroup | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.argv = argv  # the zygote's command, user switch and cgroup join included
        self.log_file = log_file
        self.cgroup, self.limits = cgroup, limits
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._closed = False  # let go for good (the agent stops): its cgroup may go

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the zygote unless it runs; it imports while the agent goes on."""
        if self._process is not None and self._process.poll() is None:
            return
        self._let_go()
        self._closed = False
        if self.cgroup is not None and self.limits is not None:
            self.cgroup.create(self.limits)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs, open(self.log_file, "ab") as out:
            self._process = subprocess.Popen(
                self.argv,
                stdin=theirs.fileno(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
        self._control = ours
        log.info("started the provider zygote %d", self._process.pid)

    async def fork(self, env: dict[str, str], token: str, log_file: Path) -> tuple[int, int]:
        """A new provider, held until its go pipe gets a byte: (its PID, the pipe's write
        end, which the caller owns). Cancelled, it lets the zygote answer (one exchange at a
        time on its socket) and closes the go pipe: a child forked meanwhile exits."""
        go_read, go_write = os.pipe()
        exchange = asyncio.ensure_future(self._exchange(env, token, log_file, go_read))
        exchange.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await asyncio.shield(exchange), go_write
        except BaseException:
            os.close(go_write)
            raise

    async def _exchange(self, env: dict[str, str], token: str, log_file: Path, go: int) -> int:
        try:
            async with self._lock:
                self.start()
                with open(log_file, "ab") as out:
                    return await asyncio.to_thread(self._ask, env, token, out.fileno(), go)
        finally:
            os.close(go)

    def _ask(self, env: dict[str, str], token: str, log_fd: int, go_fd: int) -> int:
        control = self._control
        if control is None:
            raise ZygoteUnavailable("the zygote is not running")
        message = json.dumps({"env": env, "token": token}).encode()
        try:
            control.settimeout(REPLY_TIMEOUT)
            socket.send_fds(control, [message], [log_fd, go_fd])
            reply = control.recv(REPLY_MAX)
        except OSError as exc:
            self._let_go()
            raise ZygoteUnavailable(f"the zygote did not answer: {exc!r}") from None
        if not reply:
            self._let_go()
            raise ZygoteUnavailable("the zygote exited; see its log")
        answer = json.loads(reply)
        if "pid" not in answer:
            raise ZygoteUnavailable(f"the zygote refused: {answer.get('error')}")
        return int(answer["pid"])

    def close(self) -> None:
        """Let the zygote go (it exits when its socket closes; its cgroup goes after it);
        the providers it forked run on."""
        self._closed = True
        self._let_go()

    def _let_go(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        process, self._process = self._process, None
        if process is not None:  # collected once it has gone (it is this agent's child)
            threading.Thread(
                target=self._reap, args=(process,), name="zygote-reaper", daemon=True
            ).start()

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        """Wait for the zygote to go; then, if the agent let it go for good, remove its
        cgroup (a zygote started again meanwhile keeps it: it would refuse to go)."""
        process.wait()
        if self.cgroup is not None and self._closed:
            with contextlib.suppress(OSError):
                self.cgroup.remove()
