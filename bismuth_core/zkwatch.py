"""Persistent recursive watches (ZooKeeper 3.6+ ``addWatch``) on a kazoo client.

kazoo 2.11 neither sends ``addWatch`` (opcode 106) nor passes on the events of watches it
did not set itself. :class:`PersistentWatches` adds both to one ``KazooClient``:

- the request, serialised with kazoo's protocol helpers and queued like any other request;
- one hook on that client's connection: after kazoo has handled a watch notification as
  usual, the hook hands a ``CREATED``, ``CHANGED`` or ``DELETED`` of a watched path (for a
  recursive watch: of the path or any znode below it) to the watch's callback, right there
  on kazoo's connection thread (so events and the answers of :func:`bismuth_core.zk.link`
  reach their callbacks in the order ZooKeeper sent them). The hook wraps
  ``ConnectionHandler._read_watch_event`` of this client's connection only, and is
  installed only on the kazoo releases it was checked against
  (:data:`KAZOO_VERSIONS`): any other release is refused at once with
  :class:`WatchHookMissing` rather than silently delivering nothing.

Unlike kazoo's own watches, a persistent watch fires for every change until its connection
ends. ZooKeeper restores it on a new connection only through ``setWatches2``, which kazoo
does not send; so each time the client is connected again (a new connection to the same
session, or a new session) every watch is added anew, and once ZooKeeper has confirmed it
the watch's ``rearmed`` callback runs: nothing that changed while the client was away was
announced, so the watch's owner reads its subtree again.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import kazoo.version
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, SessionExpiredError
from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.paths import _prefix_root
from kazoo.protocol.serialization import Watch, int_struct, write_string

from .errors import BismuthError
from .zk import link, run_inline

log = logging.getLogger(__name__)

# kazoo releases whose ConnectionHandler reads every watch notification through
# ``_read_watch_event(buffer, offset)``, after which the hook runs
KAZOO_VERSIONS = ("2.10.0", "2.11.0")
_HOOKED = "_bismuth_persistent_watches"  # marks a connection whose reader is wrapped


class WatchHookMissing(BismuthError):
    """This kazoo release lacks the point where persistent watches hook in."""


class WatchMode(enum.IntEnum):
    """``addWatch`` modes: one znode, or the znode and every znode below it."""

    PERSISTENT = 0
    PERSISTENT_RECURSIVE = 1


class ChangeKind(enum.Enum):
    CREATED = 1
    DELETED = 2
    CHANGED = 3


@dataclass(frozen=True)
class WatchEvent:
    """One change a persistent watch saw; ``path`` is relative to the client's chroot."""

    kind: ChangeKind
    path: str


@dataclass(frozen=True)
class AddWatch:
    """The ``addWatch`` request: a path (chroot included) and a :class:`WatchMode`."""

    path: str
    mode: int

    type: ClassVar[int] = 106  # ZooKeeper's OpCode.addWatch

    def serialize(self) -> bytearray:
        request = bytearray(write_string(self.path))
        request.extend(int_struct.pack(self.mode))
        return request

    @classmethod
    def deserialize(cls, _buffer: bytes, _offset: int) -> bool:
        return True  # the reply is a header only


@dataclass
class _Watch:
    path: str  # chroot included, as notifications name it
    mode: WatchMode
    on_event: Callable[[WatchEvent], None]
    on_rearmed: Callable[[], None]
    on_error: Callable[[Exception], None]

    def covers(self, path: str) -> bool:
        if path == self.path:
            return True
        if self.mode is not WatchMode.PERSISTENT_RECURSIVE:
            return False
        return path.startswith(self.path if self.path.endswith("/") else self.path + "/")


def check_kazoo() -> None:
    """Raise :class:`WatchHookMissing` unless this kazoo has the hook point as expected."""
    version = kazoo.version.__version__
    if version not in KAZOO_VERSIONS:
        raise WatchHookMissing(
            f"persistent ZooKeeper watches need one of kazoo {', '.join(KAZOO_VERSIONS)} "
            f"(they hook into its connection); this is kazoo {version}"
        )
    reader = getattr(ConnectionHandler, "_read_watch_event", None)
    if reader is None or list(inspect.signature(reader).parameters) != [
        "self",
        "buffer",
        "offset",
    ]:
        raise WatchHookMissing(
            f"kazoo {version} has no ConnectionHandler._read_watch_event(buffer, offset): "
            "persistent ZooKeeper watches cannot hook in"
        )


class PersistentWatches:
    """The persistent watches of one kazoo client; :meth:`close` takes the hook out again.

    Callbacks run on kazoo's connection thread and must not block (wake an event loop).
    """

    def __init__(self, client: KazooClient) -> None:
        check_kazoo()
        self._client = client
        self._watches: list[_Watch] = []
        self._exact: dict[str, list[_Watch]] = {}  # of them, the non-recursive ones by path
        self._recursive: list[_Watch] = []  # and the recursive ones
        self._lock = threading.Lock()  # the connection thread reads the list
        connection = client._connection
        if getattr(connection, _HOOKED, False):
            raise WatchHookMissing("this kazoo client already has persistent watches")
        original = connection._read_watch_event

        def read_watch_event(buffer: bytes, offset: int) -> None:
            original(buffer, offset)
            self._dispatch(buffer, offset)

        connection._read_watch_event = read_watch_event
        setattr(connection, _HOOKED, True)
        self._suspended = False  # the connection was lost since the watches were added
        client.add_listener(self._on_state)

    def close(self) -> None:
        """Stop dispatching; the server drops the watches when the connection ends."""
        self._client.remove_listener(self._on_state)
        connection = self._client._connection
        vars(connection).pop("_read_watch_event", None)
        setattr(connection, _HOOKED, False)
        with self._lock:
            self._watches.clear()
            self._exact.clear()
            self._recursive.clear()

    def add(
        self,
        path: str,
        on_event: Callable[[WatchEvent], None],
        *,
        mode: WatchMode = WatchMode.PERSISTENT_RECURSIVE,
        on_rearmed: Callable[[], None] = lambda: None,
        on_error: Callable[[Exception], None] = lambda exc: None,
    ) -> Any:
        """Watch ``path`` (relative to the chroot; it need not exist yet); returns kazoo's
        async result of the ``addWatch``. ``on_rearmed()`` runs each time the watch is in
        place again after a reconnect; ``on_error(exc)`` when re-adding it failed for another
        reason than a lost connection."""
        watch = _Watch(
            _prefix_root(self._client.chroot, path), mode, on_event, on_rearmed, on_error
        )
        with self._lock:
            self._watches.append(watch)
            if watch.mode is WatchMode.PERSISTENT_RECURSIVE:
                self._recursive.append(watch)
            else:
                self._exact.setdefault(watch.path, []).append(watch)
        return self._send(watch)

    def _send(self, watch: _Watch) -> Any:
        result = self._client.handler.async_result()
        self._client._call(AddWatch(watch.path, int(watch.mode)), result)
        return result

    # --- on kazoo's connection thread ------------------------------------------------------

    def _dispatch(self, buffer: bytes, offset: int) -> None:
        notification, _ = Watch.deserialize(buffer, offset)
        try:
            kind = ChangeKind(notification.type)
        except ValueError:
            return  # a children event (kazoo's own watches) or a watch removal
        client = self._client
        if client._stopped.is_set():
            return
        event = WatchEvent(kind, client.unchroot(notification.path))
        with self._lock:
            path = notification.path
            watches = [*self._exact.get(path, ()), *(w for w in self._recursive if w.covers(path))]
        for watch in watches:
            run_inline(watch.on_event, event)

    def _on_state(self, state: KazooState) -> None:
        if state != KazooState.CONNECTED:
            self._suspended = True
            return
        if not self._suspended:
            return  # the first connection: watches are added by ``add``
        self._suspended = False
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            link(self._send(watch), functools.partial(self._rearmed, watch))

    def _rearmed(self, watch: _Watch, result: Any) -> None:
        if result.successful():
            watch.on_rearmed()
        elif not isinstance(
            result.exception, (ConnectionLoss, ConnectionClosedError, SessionExpiredError)
        ):
            log.warning("cannot add the watch on %s again: %r", watch.path, result.exception)
            watch.on_error(result.exception)
        # a lost connection: the next CONNECTED adds it again
