"""Keeps the routing table current from ZooKeeper, using kazoo's ``TreeCache`` recipe.

One ``TreeCache`` follows each of ``/route``, ``/function`` and ``/node`` of the
environment's chroot. Their callbacks run on kazoo threads and only hand the changed path
to the event loop; there, at once or after a short coalescing window during a burst, the
routing state re-reads those paths from the caches (:mod:`.routestate`) and a new immutable
:class:`~bismuth_fe.routing.RoutingTable` replaces the old one, sharing every route the
change did not touch. The whole state is read afresh at start and after every new load of
the caches (a new session), or when a read raced a cache update.

While ZooKeeper is unreachable the caches keep their contents and the last table keeps
serving. On reconnect (same or new session) ``TreeCache`` re-reads every znode it holds;
the resulting events rebuild the table, so changes made meanwhile are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from kazoo.client import KazooState
from kazoo.recipe.cache import TreeCache, TreeEvent

from bismuth_core import layout
from bismuth_core.errors import Unavailable
from bismuth_core.zk import ZooKeeper

from .routestate import RoutingState
from .routing import RoutingTable
from .treecache import ListingTreeCache

log = logging.getLogger(__name__)

COALESCE_WINDOW = 0.01  # seconds: at most one rebuild per window during a burst of events
INITIAL_SYNC_TIMEOUT = 30.0  # seconds without a znode read before a first load gives up


class RouteCache:
    """The current routing table, rebuilt on the event loop whenever ZooKeeper changes."""

    def __init__(self, zk: ZooKeeper) -> None:
        self._zk = zk
        self._table = RoutingTable()
        self._trees: dict[str, TreeCache] = {}
        self._synced: set[str] = set()
        self._dirty = asyncio.Event()
        self._initial_sync = asyncio.Event()
        self._progress = 0.0  # loop time of the last cache event
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._subscribers: list[asyncio.Event] = []
        self._state = RoutingState()
        self._changed: set[str] = set()  # paths changed since the last rebuild
        self._full = True  # the next rebuild reads everything
        self.reloads = 0  # times ZooKeeper's state was loaded afresh (start, new sessions)

    @property
    def table(self) -> RoutingTable:
        return self._table

    def subscribe(self) -> asyncio.Event:
        """An event set whenever the table is replaced by a different one (clear it to wait
        for the next change)."""
        event = asyncio.Event()
        self._subscribers.append(event)
        return event

    async def start(self, timeout: float = INITIAL_SYNC_TIMEOUT) -> None:
        """Start following ZooKeeper; return once the first complete table is built.

        A large environment takes longer than ``timeout`` to load (about a minute for
        100,000 znodes): the load gives up only after ``timeout`` seconds in which no znode
        arrived.
        """
        self._zk.add_listener(self._on_session_state)
        for root in layout.ROUTING_ROOTS:
            tree = ListingTreeCache(self._zk.client, root)
            wake = self._zk.threadsafe(functools.partial(self._on_tree_event, root))
            tree.listen(lambda event, wake=wake: wake(event.event_type, _path(event)))
            tree.listen_fault(self._zk.threadsafe(self._on_fault))
            self._trees[root] = tree
        self._progress = asyncio.get_running_loop().time()
        await asyncio.to_thread(self._start_trees)
        try:
            await self._until_loaded(timeout)
        except TimeoutError as exc:
            await self.close()
            raise Unavailable(
                f"routing state not loaded from ZooKeeper: nothing read for {timeout}s"
            ) from exc
        self._rebuild()
        self._task = asyncio.create_task(self._follow(), name="route-cache")

    async def _until_loaded(self, stalled: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._initial_sync.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._initial_sync.wait(), min(1.0, stalled))
            if not self._initial_sync.is_set() and loop.time() - self._progress > stalled:
                raise TimeoutError

    def _start_trees(self) -> None:
        for tree in self._trees.values():
            tree.start()  # blocking: ensures the root path exists

    async def close(self) -> None:
        self._closed = True  # the session closing next is no outage
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for tree in self._trees.values():
            with contextlib.suppress(Exception):
                tree.close()
        self._trees.clear()

    # --- events (on the event loop) --------------------------------------------------

    def _on_tree_event(self, root: str, kind: int, path: str | None = None) -> None:
        self._progress = asyncio.get_running_loop().time()
        if path is not None and kind in _NODE_EVENTS:
            self._changed.add(path)
        else:
            self._full = True
        if kind == TreeEvent.INITIALIZED:
            self._synced.add(root)
            self.reloads += 1
            if self._initial_sync.is_set():
                log.info("ZooKeeper subtree %s reloaded after the session was lost", root)
            elif self._synced >= set(layout.ROUTING_ROOTS):
                self._initial_sync.set()
        self._dirty.set()

    def _on_session_state(self, state: KazooState) -> None:
        if self._closed:
            return
        if state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection lost: serving from the last routing table")
        elif state == KazooState.LOST:
            log.warning("ZooKeeper session expired: serving from the last routing table")
        elif state == KazooState.CONNECTED:
            log.info("ZooKeeper connected: reloading routing state")
        self._full = True
        self._dirty.set()

    def _on_fault(self, exc: Exception) -> None:
        log.warning("ZooKeeper cache error: %r", exc, extra={"error": type(exc).__name__})
        self._full = True
        self._dirty.set()

    async def _follow(self) -> None:
        """Rebuild at once on a change (a status turning Running routes now), then at most
        once per window while a burst goes on (its rest is in the next rebuild)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._rebuild()
            await asyncio.sleep(COALESCE_WINDOW)

    def _rebuild(self) -> None:
        full, changed = self._full, self._changed
        self._full, self._changed = False, set()
        try:
            table = self._next_table(full, changed)
        except (KeyError, RuntimeError) as exc:
            # a kazoo thread changed a cache while it was read: read it all again shortly
            log.debug("routing snapshot raced a cache update: %r", exc)
            self._full = True
            self._dirty.set()
            return
        except Exception:
            log.exception("cannot read routing state; keeping the last routing table")
            self._full = True
            return
        if table is not self._table and table != self._table:
            log.debug(
                "routing table rebuilt: %d route(s), %d change(s) read",
                len(table.routes),
                len(changed),
            )
            self._table = table
            for event in self._subscribers:
                event.set()

    def _next_table(self, full: bool, changed: set[str]) -> RoutingTable:
        if full:
            self._state = RoutingState.load(self)
            return self._state.table()
        hosts, nodes = self._state.apply(self, changed)
        return self._state.table_after(self._table, hosts, nodes)

    # --- reading the caches (RoutingState's Reader) ----------------------------------------

    def data(self, path: str) -> bytes | None:
        node = self._trees["/" + path.split("/")[1]].get_data(path)
        return None if node is None else node.data  # type: ignore[no-any-return]

    def children(self, path: str) -> frozenset[str]:
        return self._trees["/" + path.split("/")[1]].get_children(path, frozenset())  # type: ignore[no-any-return]


_NODE_EVENTS = (TreeEvent.NODE_ADDED, TreeEvent.NODE_UPDATED, TreeEvent.NODE_REMOVED)


def _path(event: TreeEvent) -> str | None:
    data = event.event_data
    return data.path if data is not None else None  # type: ignore[no-any-return]
