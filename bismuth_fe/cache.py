"""Keeps the routing table current from ZooKeeper, one persistent recursive watch per subtree.

One :class:`~bismuth_core.subtree.SubtreeMirror` follows each of ``/route``, ``/function`` and
``/node`` of the environment's chroot: a change in ZooKeeper costs one read of the znode it
names, never a new listing of the thousands of its siblings. The mirrors run on the event
loop and hand each changed path to the cache; at once, or after a short coalescing window
during a burst, the routing state re-reads those paths (:mod:`.routestate`) and a new
immutable :class:`~bismuth_fe.routing.RoutingTable` replaces the old one, sharing every
route the change did not touch. The whole state is read afresh at start and after every
walk of the subtrees (at start and after each reconnect).

While ZooKeeper is unreachable the mirrors keep their contents and the last table keeps
serving. On reconnect (same or new session) each watch is added again and its subtree
walked again, so changes made meanwhile are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable

from kazoo.client import KazooState

from bismuth_core import layout
from bismuth_core.errors import Unavailable
from bismuth_core.subtree import SubtreeMirror
from bismuth_core.zk import ZooKeeper
from bismuth_core.zkwatch import PersistentWatches

from .routestate import RoutingState
from .routing import RoutingTable

log = logging.getLogger(__name__)

COALESCE_WINDOW = 0.01  # seconds: at most one rebuild per window during a burst of events
INITIAL_SYNC_TIMEOUT = 30.0  # seconds without a znode read before a first load gives up


class RouteCache:
    """The current routing table, rebuilt on the event loop whenever ZooKeeper changes."""

    def __init__(self, zk: ZooKeeper) -> None:
        self._zk = zk
        self._table = RoutingTable()
        self._watches: PersistentWatches | None = None
        self._mirrors: dict[str, SubtreeMirror] = {}
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
        self._watches = PersistentWatches(self._zk.client)  # refuses an unfit kazoo
        self._zk.add_listener(self._on_session_state)
        for root in layout.ROUTING_ROOTS:
            self._mirrors[root] = SubtreeMirror(
                self._zk,
                root,
                wants_data=layout.routing_reads_data,
                on_change=self._on_change,
                on_loaded=functools.partial(self._on_loaded, root),
            )
        self._progress = asyncio.get_running_loop().time()
        try:
            for mirror in self._mirrors.values():
                await mirror.start(self._watches)
            await self._until_loaded(timeout)
        except TimeoutError as exc:
            await self.close()
            raise Unavailable(
                f"routing state not loaded from ZooKeeper: nothing read for {timeout}s"
            ) from exc
        except BaseException:
            await self.close()
            raise
        self._rebuild()
        self._task = asyncio.create_task(self._follow(), name="route-cache")

    async def _until_loaded(self, stalled: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._initial_sync.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._initial_sync.wait(), min(1.0, stalled))
            progress = max([self._progress, *(m.progress for m in self._mirrors.values())])
            if not self._initial_sync.is_set() and loop.time() - progress > stalled:
                raise TimeoutError

    async def close(self) -> None:
        self._closed = True  # the session closing next is no outage
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for mirror in self._mirrors.values():
            mirror.close()
        self._mirrors.clear()
        if self._watches is not None:
            self._watches.close()
            self._watches = None

    # --- events (on the event loop) --------------------------------------------------

    def _on_change(self, path: str) -> None:
        self._changed.add(path)
        self._dirty.set()

    def _on_loaded(self, root: str) -> None:
        """A mirror walked its whole subtree: at start, or after a reconnect."""
        self._full = True
        self._synced.add(root)
        self.reloads += 1
        if self._initial_sync.is_set():
            log.info("ZooKeeper subtree %s read again after a reconnect", root)
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
            log.info("ZooKeeper connected: reading the routing state again")

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

    # --- reading the mirrors (RoutingState's Reader) ---------------------------------------

    def data(self, path: str) -> bytes | None:
        return self._mirrors["/" + path.split("/")[1]].data(path)

    def children(self, path: str) -> Iterable[str]:
        return self._mirrors["/" + path.split("/")[1]].children(path)
