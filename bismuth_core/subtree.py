"""One ZooKeeper subtree mirrored in memory, kept current by a persistent recursive watch.

:class:`SubtreeMirror` adds one persistent recursive watch on its root
(:mod:`bismuth_core.zkwatch`) and walks the subtree once: each znode's data is read (only
where ``wants_data`` says the reader uses it) and its children listed. After that a change
costs one read of the znode it names (its data, or its children where the data is not
used), and the change is applied when that read answers: ``NoNode`` drops the znode. A
new function never re-lists the thousands of names next to it.

Everything here runs on the event loop; kazoo's threads only hand events and read results
over. Reads and events of one path can reach the loop in either order (kazoo delivers them
on different threads), so each read and each event gets a sequence number when the loop
issues or sees it, and a read's answer counts only if nothing about its path was seen after
the read was sent: the read that follows that event brings the newer state.

When the connection comes back (same session or a new one) the watch is added again and
the subtree walked again; what the walk did not meet is dropped. Until then, and while
ZooKeeper is away, the mirror keeps what it had.

A mirror may stop ``depth`` levels below its root: deeper znodes are neither walked nor
read when their events arrive (the agent mirrors its node's container znodes, not the
status znodes it writes below them). It keeps each znode's creation time (``ctime``) with
its data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, NoNodeError, SessionExpiredError

from bismuth_core.errors import Unavailable
from bismuth_core.zk import ZooKeeper, link
from bismuth_core.zkwatch import PersistentWatches, WatchEvent

log = logging.getLogger(__name__)

_CONNECTION_TROUBLE = (ConnectionLoss, ConnectionClosedError, SessionExpiredError)


class SubtreeMirror:
    """The znodes at and below ``root``: which exist, their children and wanted data.

    ``on_change(path)`` runs on the loop for every znode whose existence or data changed;
    ``on_loaded()`` when a walk of the whole subtree (the first, or one after a reconnect)
    has finished.
    """

    def __init__(
        self,
        zk: ZooKeeper,
        root: str,
        *,
        wants_data: Callable[[str], bool],
        on_change: Callable[[str], None],
        on_loaded: Callable[[], None],
        depth: int | None = None,
    ) -> None:
        self._zk = zk
        self.root = root
        self._depth = depth  # levels below root mirrored; None: all
        self._root_depth = root.rstrip("/").count("/")
        self._wants_data = wants_data
        self._on_change = on_change
        self._on_loaded = on_loaded
        self._data: dict[str, bytes | None] = {}  # every znode seen to exist
        self._ctimes: dict[str, float] = {}  # of those whose data was read: seconds
        self._children: dict[str, set[str]] = {}
        self._last: dict[str, int] = {}  # sequence of the last event or counted read, per path
        self._floor = 0  # reads sent before the last finished walk no longer count
        self._seq = 0
        self._walks = 0  # walks started
        self._walk = 0  # the one under way; 0: none
        self._walk_start = 0  # sequence at which it started
        self._walk_ops = 0  # its reads not yet answered
        self._walk_complete = True  # no read of it failed
        self.progress = 0.0  # loop time of the last answer or event
        self._closed = False

    # --- reading ---------------------------------------------------------------------------

    def data(self, path: str) -> bytes | None:
        return self._data.get(path)

    def ctime(self, path: str) -> float | None:
        """When the znode was created (seconds since the epoch), if its data was read."""
        return self._ctimes.get(path)

    def children(self, path: str) -> Iterable[str]:
        return self._children.get(path, ())

    def __len__(self) -> int:
        return len(self._data)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, watches: PersistentWatches) -> None:
        """Add the watch and begin the first walk (``on_loaded`` says when it is done)."""
        to_loop = self._zk.threadsafe(self._on_event)

        def on_event(event: WatchEvent) -> None:  # on kazoo's thread: reads only fixed fields
            if self._within(event.path):  # events below ``depth`` never reach the loop
                to_loop(event)

        rearmed = self._zk.threadsafe(self._start_walk)
        added = watches.add(self.root, on_event, on_rearmed=rearmed)
        try:
            await asyncio.to_thread(added.get, True, self._zk.op_timeout)
        except Exception as exc:  # kazoo's timeout, connection and ACL errors
            raise Unavailable(f"cannot watch {self.root} in ZooKeeper: {exc!r}") from exc
        self._start_walk()

    def close(self) -> None:
        self._closed = True
        self._walk = 0

    # --- events ----------------------------------------------------------------------------

    def _on_event(self, event: WatchEvent) -> None:
        if self._closed:  # (events below ``depth`` were dropped on kazoo's thread)
            return
        self._touch()
        path = event.path
        self._last[path] = self._next()
        # Applied when a read of the path answers, a deletion too: answers come back in the
        # order the reads were sent, so changes apply in ZooKeeper's order. (A deletion
        # applied at once could overtake the read of a change before it: a function's new
        # container turning Running, then its old one deleted, would leave it with none.)
        self._read(path, 0)

    # --- walking ---------------------------------------------------------------------------

    def _start_walk(self) -> None:
        if self._closed:
            return
        self._walks += 1
        self._walk = self._walks
        self._walk_start = self._next()
        self._walk_ops = 0
        self._walk_complete = True
        self._read(self.root, self._walk)

    def _walking(self, walk: int) -> bool:
        """Whether ``walk`` is the walk under way (0 is no walk: an event's read)."""
        return walk != 0 and walk == self._walk

    def _walk_op_done(self, walk: int) -> None:
        if not self._walking(walk):
            return
        self._walk_ops -= 1
        if self._walk_ops > 0:
            return
        if not self._walk_complete:
            return  # a read was cut off: the reconnect's walk finishes the job
        gone = [p for p in self._data if self._last.get(p, 0) < self._walk_start]
        for path in gone:
            self._remove(path)
        self._floor = self._walk_start
        self._last = {p: s for p, s in self._last.items() if s >= self._floor}
        self._walk = 0
        self._on_loaded()

    # --- reads -----------------------------------------------------------------------------

    def _read(self, path: str, walk: int) -> None:
        """Read ``path`` (its data if wanted, else its children); ``walk``: the walk it is
        part of (0: an event's), which goes on to the children."""
        seq = self._next()
        client = self._zk.client
        if walk:
            self._walk_ops += 1
        if self._wants_data(path):
            result = client.get_async(path)
        else:
            result = client.get_children_async(path)
        answer = self._zk.threadsafe(self._answered)
        link(result, lambda r: answer(path, seq, walk, r))

    def _list(self, path: str, walk: int) -> None:
        """List ``path``'s children to walk on into them."""
        self._walk_ops += 1
        answer = self._zk.threadsafe(self._listed)
        link(self._zk.client.get_children_async(path), lambda r: answer(path, walk, r))

    def _answered(self, path: str, seq: int, walk: int, result: Any) -> None:
        if self._closed:
            return
        self._touch()
        found, value = self._outcome(path, walk, result)
        if found is not None and seq > self._last.get(path, self._floor):
            self._last[path] = seq
            if not found:
                self._remove(path)
            elif self._wants_data(path):
                self._ctimes[path] = value[1].ctime / 1000
                self._set(path, value[0])
            elif self._exists(path):
                self._on_change(path)
        if found and self._walking(walk):
            if self._wants_data(path):
                if value[1].numChildren > 0 and self._within(path + "/x"):
                    self._list(path, walk)
            else:
                self._walk_into(path, value, walk)
        self._walk_op_done(walk)

    def _listed(self, path: str, walk: int, result: Any) -> None:
        if self._closed:
            return
        self._touch()
        found, names = self._outcome(path, walk, result)
        if found and self._walking(walk):
            self._walk_into(path, names, walk)
        self._walk_op_done(walk)

    def _within(self, path: str) -> bool:
        return self._depth is None or path.count("/") - self._root_depth <= self._depth

    def _walk_into(self, path: str, names: Iterable[str], walk: int) -> None:
        prefix = path.rstrip("/") + "/"
        if not self._within(prefix + "x"):
            return
        for name in names:
            self._read(prefix + name, walk)

    def _outcome(self, path: str, walk: int, result: Any) -> tuple[bool | None, Any]:
        """(True, value) for an answer, (False, None) for no such znode, (None, None) for
        a failure (the walk then counts as incomplete)."""
        if result.successful():
            return True, result.value
        exc = result.exception
        if isinstance(exc, NoNodeError):
            return False, None
        if self._walking(walk):
            self._walk_complete = False
        if not isinstance(exc, _CONNECTION_TROUBLE):
            log.warning("cannot read %s from ZooKeeper: %r", path, exc)
        return None, None

    # --- the mirror ------------------------------------------------------------------------

    def _set(self, path: str, data: bytes) -> None:
        new = self._exists(path)
        if new or self._data[path] != data:
            self._data[path] = data
            self._on_change(path)

    def _exists(self, path: str) -> bool:
        """Note that ``path`` exists; whether it is new."""
        if path in self._data:
            return False
        self._data[path] = None
        if path != self.root:
            parent, _, name = path.rpartition("/")
            self._children.setdefault(parent or "/", set()).add(name)
        return True

    def _remove(self, path: str) -> None:
        if path not in self._data:
            return
        for name in list(self._children.pop(path, ())):
            self._remove(path.rstrip("/") + "/" + name)
        del self._data[path]
        self._ctimes.pop(path, None)
        if path != self.root:
            parent, _, name = path.rpartition("/")
            siblings = self._children.get(parent or "/")
            if siblings is not None:
                siblings.discard(name)
        self._on_change(path)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _touch(self) -> None:
        self.progress = asyncio.get_running_loop().time()
