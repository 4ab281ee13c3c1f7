"""A kazoo client bridged into asyncio.

kazoo runs its own threads. Its ``*_async`` calls return results that complete on those
threads; :class:`ZooKeeper` turns them into awaitables on the event loop, bounded by a
timeout, and maps connection trouble to :class:`Unavailable` and a refusal by the
environment's ACLs to :class:`AccessDenied`. State changes reach asyncio callbacks through
``loop.call_soon_threadsafe``; nothing here blocks the event loop.

A session authenticates as its :class:`ZkAccess` says, and every znode it creates (through
these methods, multi-ops included) gets the ACL the access gives for its path; znodes that
kazoo's recipes create get its ``default_acl``.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.handlers.threading import AsyncResult, SequentialThreadingHandler
from kazoo.handlers.utils import selector_select
from kazoo.protocol.states import ZnodeStat
from kazoo.recipe.watchers import ChildrenWatch
from kazoo.retry import KazooRetry
from kazoo.security import ACL

from .errors import AccessDenied, Unavailable
from .layout import chroot

log = logging.getLogger(__name__)

_UNAVAILABLE = (
    ConnectionLoss,
    SessionExpiredError,
    ConnectionClosedError,
    OperationTimeoutError,
)

__all__ = [
    "AccessDenied",
    "BadVersionError",
    "NoNodeError",
    "NodeExistsError",
    "NotEmptyError",
    "TransactionFailed",
    "ZkAccess",
    "ZnodeStat",
    "ZooKeeper",
]


class TransactionFailed(Exception):
    """A multi-op was rolled back; ``cause`` is the exception of the op that failed."""

    def __init__(self, cause: Exception, index: int) -> None:
        super().__init__(f"transaction op {index} failed: {cause!r}")
        self.cause = cause
        self.index = index


@dataclass(frozen=True)
class Op:
    """One operation of a multi-op, built by the helpers below and run by ``commit``."""

    kind: str
    path: str
    data: bytes = b""
    version: int = -1
    ephemeral: bool = False


def create(path: str, data: bytes = b"", ephemeral: bool = False) -> Op:
    return Op("create", path, data, ephemeral=ephemeral)


def set_data(path: str, data: bytes, version: int = -1) -> Op:
    return Op("set", path, data, version)


def delete(path: str, version: int = -1) -> Op:
    return Op("delete", path, version=version)


def check(path: str, version: int) -> Op:
    return Op("check", path, version=version)


@dataclass(frozen=True)
class ZkAccess:
    """Who a session is (kazoo ``auth_data``), and the ACL of each znode it creates.

    ``acl_for`` None: the identity creates nothing (a reader). ``default_acl``: what kazoo's
    recipes (Election, Lock, Party) create gets.
    """

    auth: tuple[str, str]
    acl_for: Callable[[str], list[ACL]] | None = None
    default_acl: list[ACL] | None = None


DENIED = (
    "ZooKeeper refused it (NoAuth): this session lacks the cluster's credentials "
    "(they derive from the cluster key)"
)


class _Poll:
    """``selectors`` as kazoo's select uses it, with poll(2) as the default selector."""

    DefaultSelector = selectors.PollSelector
    EVENT_READ = selectors.EVENT_READ
    EVENT_WRITE = selectors.EVENT_WRITE


def run_inline(callback: Callable[..., None], *args: Any) -> None:
    """Run a callback that must not block (it hands its work to an event loop) right here,
    on one of kazoo's threads; an error is logged, never raised into kazoo's loop."""
    try:
        callback(*args)
    except Exception:
        log.exception("ZooKeeper callback failed")


class Answer(AsyncResult):  # type: ignore[misc]
    """kazoo's result of one request, with callbacks that run in the thread that completes
    it (:meth:`link_inline`): kazoo's connection thread, as it reads the answer, instead of
    a hop through its completion queue and thread. For callbacks that only hand the answer
    to an event loop: under load each such hop waited for a core, and for the GIL."""

    def __init__(self, handler: Any) -> None:
        super().__init__(handler)
        self._inline: list[Callable[[Answer], None]] = []

    def link_inline(self, callback: Callable[[Answer], None]) -> None:
        with self._condition:
            if self.ready():
                run_inline(callback, self)
            else:
                self._inline.append(callback)

    def _do_callbacks(self) -> None:  # kazoo calls it holding the result's condition
        inline, self._inline = self._inline, []
        for callback in inline:
            run_inline(callback, self)
        super()._do_callbacks()


def link(result: Any, callback: Callable[[Any], None]) -> None:
    """Call ``callback(result)`` once ``result`` completes: inline where it completes if it
    is an :class:`Answer` (``callback`` must not block), else through kazoo's completion
    thread."""
    if isinstance(result, Answer):
        result.link_inline(callback)
    else:
        result.rawlink(callback)


class PollingHandler(SequentialThreadingHandler):
    """kazoo's threading handler, waiting on its sockets with poll(2): its own select makes
    (and closes) a new epoll instance for every wait of its connection loop, which runs
    once per request and per answer. Same waits, one system call instead of five. Its
    results are :class:`Answer` objects."""

    def select(self, *args: Any, **kwargs: Any) -> Any:
        return selector_select(*args, selectors_module=_Poll, **kwargs)

    def async_result(self) -> Answer:
        return Answer(self)


class ZooKeeper:
    """One kazoo session, chrooted to an environment, usable from asyncio.

    ``access`` None: an anonymous session, which an environment's ACLs refuse (it works
    only on a tree made before ACLs). ``handler``: kazoo's handler (its worker threads), if
    not one of its own.
    """

    def __init__(
        self,
        hosts: str,
        env: str = "default",
        *,
        access: ZkAccess | None = None,
        session_timeout: float = 10.0,
        op_timeout: float = 5.0,
        handler: PollingHandler | None = None,
    ) -> None:
        self.hosts = hosts
        self.env = env
        self.op_timeout = op_timeout
        self.access = access
        self.client = KazooClient(
            hosts=hosts + chroot(env),
            handler=handler or PollingHandler(),
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=2.0),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0),
            auth_data=[access.auth] if access else None,
            default_acl=access.default_acl if access else None,
        )
        self._listeners: list[Callable[[KazooState], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client.add_listener(self._on_state)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> None:
        """Connect, waiting up to ``timeout`` seconds; raise :class:`Unavailable` on failure."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self.client.start, timeout)
        except Exception as exc:  # kazoo raises its own timeout type
            await asyncio.to_thread(self.client.stop)
            raise Unavailable(f"cannot connect to ZooKeeper at {self.hosts}: {exc}") from exc

    async def stop(self) -> None:
        await asyncio.to_thread(self.client.stop)
        await asyncio.to_thread(self.client.close)

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def add_listener(self, callback: Callable[[KazooState], None]) -> None:
        """Call ``callback(state)`` on the event loop whenever the session state changes."""
        self._listeners.append(callback)

    def _on_state(self, state: KazooState) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for callback in list(self._listeners):
            loop.call_soon_threadsafe(callback, state)

    def threadsafe(self, callback: Callable[..., Any]) -> Callable[..., None]:
        """Wrap ``callback`` so that kazoo threads schedule it on the event loop instead."""
        loop = asyncio.get_running_loop()

        def wake(*args: Any, **kwargs: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: callback(*args, **kwargs))

        return wake

    async def watch_children(self, path: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` on the event loop each time ``path``'s children change (and once
        now), with kazoo's ``ChildrenWatch`` recipe; returns the function that ends it.

        The recipe reads the children as it is built, so that happens off the event loop;
        ``wake`` only wakes: the caller reads what it needs itself.
        """
        wake_on_loop = self.threadsafe(wake)
        watching = True

        def on_children(_children: list[str]) -> bool:
            if watching:
                wake_on_loop()
            return watching  # False ends the recipe's watch

        def stop() -> None:
            nonlocal watching
            watching = False

        await asyncio.to_thread(ChildrenWatch, self.client, path, on_children)
        return stop

    # --- single operations -----------------------------------------------------

    async def _await(self, async_result: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any) -> None:
            try:
                value = result.get_nowait()
            except Exception as exc:  # delivered to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, value, None)

        link(async_result, settle)  # settle only hands it to the loop
        try:
            return await asyncio.wait_for(future, self.op_timeout)
        except (TimeoutError, *_UNAVAILABLE) as exc:
            raise Unavailable(f"ZooKeeper is unreachable ({type(exc).__name__})") from exc
        except NoAuthError as exc:
            raise AccessDenied(DENIED) from exc

    def acl(self, path: str) -> list[ACL] | None:
        """The ACL a znode created at ``path`` gets (``None``: kazoo's default)."""
        if self.access is None or self.access.acl_for is None:
            return None
        return self.access.acl_for(path)

    def _ensure_connected(self) -> None:
        if not self.client.connected:
            raise Unavailable("ZooKeeper is unreachable (not connected)")

    async def get(self, path: str) -> tuple[bytes, ZnodeStat]:
        self._ensure_connected()
        return await self._await(self.client.get_async(path))  # type: ignore[no-any-return]

    async def get_or_none(self, path: str) -> tuple[bytes, ZnodeStat] | None:
        try:
            return await self.get(path)
        except NoNodeError:
            return None

    async def children(self, path: str, watch: Callable[[Any], None] | None = None) -> list[str]:
        """Children of ``path``; an absent path has none (and gets no ``watch``: a kazoo
        watcher, called once on its thread when the children change; the same function set
        twice is kept once)."""
        self._ensure_connected()
        try:
            request = self.client.get_children_async(path, watch=watch)
            return await self._await(request)  # type: ignore[no-any-return]
        except NoNodeError:
            return []

    async def exists(
        self, path: str, watch: Callable[[Any], None] | None = None
    ) -> ZnodeStat | None:
        """The znode's stat, or None; ``watch`` (a kazoo watcher: one call on its thread when
        the znode is created, changed or deleted; the same function set twice is kept once)."""
        self._ensure_connected()
        return await self._await(self.client.exists_async(path, watch=watch))  # type: ignore[no-any-return]

    async def create(self, path: str, data: bytes = b"", ephemeral: bool = False) -> str:
        self._ensure_connected()
        return await self._await(  # type: ignore[no-any-return]
            self.client.create_async(path, data, acl=self.acl(path), ephemeral=ephemeral)
        )

    async def set(self, path: str, data: bytes, version: int = -1) -> ZnodeStat:
        self._ensure_connected()
        return await self._await(self.client.set_async(path, data, version))  # type: ignore[no-any-return]

    async def delete(self, path: str, version: int = -1) -> None:
        self._ensure_connected()
        await self._await(self.client.delete_async(path, version))

    async def ensure_path(self, path: str) -> None:
        self._ensure_connected()
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self.client.ensure_path, path, self.acl(path)),
                self.op_timeout,
            )
        except (TimeoutError, *_UNAVAILABLE) as exc:
            raise Unavailable(f"ZooKeeper is unreachable ({type(exc).__name__})") from exc
        except NoAuthError as exc:
            raise AccessDenied(DENIED) from exc

    async def get_acls(self, path: str) -> list[ACL]:
        self._ensure_connected()
        acls, _stat = await self._await(self.client.get_acls_async(path))
        return list(acls)

    async def set_acls(self, path: str, acls: list[ACL]) -> None:
        self._ensure_connected()
        await self._await(self.client.set_acls_async(path, acls))

    # --- multi-op -----------------------------------------------------------------

    def send(self, ops: Sequence[Op]) -> Awaitable[list[Any]]:
        """Send ``ops`` as one multi-op now, in call order with this session's other
        requests (ZooKeeper applies them in that order); the awaitable gives ZooKeeper's
        per-op results as they are, failures included (see :func:`transaction_failure`)."""
        self._ensure_connected()
        txn = self.client.transaction()
        for op in ops:
            if op.kind == "create":
                txn.create(op.path, op.data, acl=self.acl(op.path), ephemeral=op.ephemeral)
            elif op.kind == "set":
                txn.set_data(op.path, op.data, op.version)
            elif op.kind == "delete":
                txn.delete(op.path, op.version)
            elif op.kind == "check":
                txn.check(op.path, op.version)
            else:
                raise ValueError(f"unknown op kind {op.kind!r}")
        return self._await(txn.commit_async())  # type: ignore[no-any-return]

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        """Run ``ops`` as one ZooKeeper multi-op; raise :class:`TransactionFailed` on rollback."""
        self._ensure_connected()
        if not ops:
            return []
        results: list[Any] = await self.send(ops)
        failure = transaction_failure(results)
        if failure is not None:
            raise failure
        return results


def transaction_failure(results: Sequence[Any]) -> Exception | None:
    """What a multi-op's results say went wrong: :class:`AccessDenied` if an op was refused
    by the ACLs, :class:`TransactionFailed` naming the op that failed, or ``None``."""
    for index, result in enumerate(results):
        if isinstance(result, NoAuthError):
            denied = AccessDenied(DENIED)
            denied.__cause__ = result
            return denied
        if isinstance(result, Exception) and not isinstance(result, RolledBackError):
            return TransactionFailed(result, index)
    return None


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
