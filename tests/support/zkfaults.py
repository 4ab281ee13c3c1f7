"""Faults forced on a ZooKeeper session: expiry, connection loss through a TCP proxy, and
another writer's change landing between an operation's reads and its commit."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kazoo.client import KazooClient

from bismuth_core.zk import Op, ZooKeeper


class InterleavedSession(ZooKeeper):
    """A real ZooKeeper session whose next multi-op runs only after ``before`` has run:
    another writer's change lands between an operation's reads and its commit."""

    before: Callable[[], Awaitable[object]] | None = None

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        before, self.before = self.before, None
        if before is not None:
            await before()
        return await super().commit(ops)


def expire_session(client: KazooClient, hosts: str, timeout: float = 10.0) -> None:
    """Expire ``client``'s session now: another connection with the same id closes it."""
    expire_session_id(client.client_id, hosts, timeout)


def expire_session_id(client_id: tuple[int, bytes], hosts: str, timeout: float = 10.0) -> None:
    """Expire the session ``client_id`` (even while its own client is cut off from it)."""
    twin = KazooClient(hosts=hosts, client_id=client_id)
    twin.start(timeout)
    twin.stop()
    twin.close()


class TcpProxy:
    """Forwards a loopback port to ZooKeeper; ``cut()`` drops every connection and refuses
    new ones until ``restore()``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until truthy (returned) or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
