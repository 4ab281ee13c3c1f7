"""Keeps the routing table current from ZooKeeper, using kazoo's ``TreeCache`` recipe.

One ``TreeCache`` follows each of ``/route``, ``/function`` and ``/node`` of the
environment's chroot. Their callbacks run on kazoo threads and only wake the event loop;
there, after a short coalescing window, the whole state is read from the caches and a new
immutable :class:`~bismuth_fe.routing.RoutingTable` replaces the old one.

While ZooKeeper is unreachable the caches keep their contents and the last table keeps
serving. On reconnect (same or new session) ``TreeCache`` re-reads every znode it holds;
the resulting events rebuild the table, so changes made meanwhile are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from dataclasses import dataclass, field

from kazoo.client import KazooState
from kazoo.recipe.cache import TreeCache, TreeEvent

from bismuth_core import layout
from bismuth_core.errors import Unavailable
from bismuth_core.layout import Backend, ContainerStatus, ServingEndpoint
from bismuth_core.zk import ZooKeeper

from .routing import ClusterSnapshot, RoutingTable, build_table

log = logging.getLogger(__name__)

COALESCE_WINDOW = 0.01  # seconds: at most one rebuild per window during a burst of events
INITIAL_SYNC_TIMEOUT = 30.0


class RouteCache:
    """The current routing table, rebuilt on the event loop whenever ZooKeeper changes."""

    def __init__(self, zk: ZooKeeper) -> None:
        self._zk = zk
        self._table = RoutingTable()
        self._trees: dict[str, TreeCache] = {}
        self._synced: set[str] = set()
        self._dirty = asyncio.Event()
        self._initial_sync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._subscribers: list[asyncio.Event] = []
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
        """Start following ZooKeeper; return once the first complete table is built."""
        self._zk.add_listener(self._on_session_state)
        for root in layout.ROUTING_ROOTS:
            tree = TreeCache(self._zk.client, root)
            wake = self._zk.threadsafe(functools.partial(self._on_tree_event, root))
            tree.listen(lambda event, wake=wake: wake(event.event_type))
            tree.listen_fault(self._zk.threadsafe(self._on_fault))
            self._trees[root] = tree
        await asyncio.to_thread(self._start_trees)
        try:
            await asyncio.wait_for(self._initial_sync.wait(), timeout)
        except TimeoutError as exc:
            await self.close()
            raise Unavailable(f"routing state not loaded from ZooKeeper within {timeout}s") from exc
        self._rebuild()
        self._task = asyncio.create_task(self._follow(), name="route-cache")

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

    def _on_tree_event(self, root: str, kind: int) -> None:
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
        self._dirty.set()

    def _on_fault(self, exc: Exception) -> None:
        log.warning("ZooKeeper cache error: %r", exc, extra={"error": type(exc).__name__})
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
        try:
            snapshot = self._snapshot()
        except (KeyError, RuntimeError) as exc:
            # a kazoo thread changed a cache while it was read: read it again shortly
            log.debug("routing snapshot raced a cache update: %r", exc)
            self._dirty.set()
            return
        except Exception:
            log.exception("cannot read routing state; keeping the last routing table")
            return
        table = build_table(snapshot)
        if table != self._table:
            log.debug(
                "routing table rebuilt: %d route(s), %d serving backend(s)",
                len(table.routes),
                table.serving_backends,
            )
            self._table = table
            for event in self._subscribers:
                event.set()

    # --- reading the caches ------------------------------------------------------------

    def _snapshot(self) -> ClusterSnapshot:
        nodes = self._nodes()
        return ClusterSnapshot(
            self._routes(),
            self._backends(),
            nodes.statuses,
            frozenset(nodes.pools),
            nodes.endpoints,
            frozenset(nodes.names),
            {ip: pool for ip, pool in nodes.pools.items() if pool},
        )

    def _data(self, root: str, path: str) -> bytes | None:
        node = self._trees[root].get_data(path)
        return None if node is None else node.data  # type: ignore[no-any-return]

    def _children(self, root: str, path: str) -> frozenset[str]:
        return self._trees[root].get_children(path, frozenset())  # type: ignore[no-any-return]

    def _routes(self) -> dict[str, uuid.UUID]:
        routes = {}
        for host in self._children(layout.ROUTES, layout.ROUTES):
            fid = layout.decode_route(self._data(layout.ROUTES, layout.route_path(host)))
            if fid is not None:
                routes[host] = fid
        return routes

    def _backends(self) -> dict[uuid.UUID, tuple[Backend, ...]]:
        backends = {}
        for name in self._children(layout.FUNCTIONS, layout.FUNCTIONS):
            fid = layout.parse_uuid(name)
            if fid is None:
                continue
            raw = self._data(layout.FUNCTIONS, layout.backends_path(fid))
            if raw is None:
                continue
            try:
                backends[fid] = layout.unpack_backends(raw)
            except ValueError as exc:
                log.warning("ignoring malformed backends: %s", exc, extra={"function_id": fid})
        return backends

    def _nodes(self) -> NodesView:
        view = NodesView()
        for name in self._children(layout.NODES, layout.NODES):
            ip = layout.parse_ipv4(name)
            if ip is None:
                continue
            view.names.add(ip)
            alive = self._trees[layout.NODES].get_data(layout.alive_path(ip))
            if alive is not None:
                view.pools[ip] = layout.NodeAlive.decode(alive.data).pool
            for child in self._children(layout.NODES, layout.containers_path(ip)):
                cid = layout.parse_uuid(child)
                if cid is None:
                    continue
                raw = self._data(layout.NODES, layout.status_path(ip, cid))
                if raw is not None:
                    backend = Backend(ip, cid)
                    view.statuses[backend] = layout.decode_status(raw)
                    endpoint = layout.decode_endpoint(raw)
                    if endpoint is not None:
                        view.endpoints[backend] = endpoint
        return view


@dataclass
class NodesView:
    """What ``/node`` says: provisioned nodes, live ones' pools, containers' statuses."""

    names: set[str] = field(default_factory=set)
    pools: dict[str, str] = field(default_factory=dict)  # live node -> pool ("" if none)
    statuses: dict[Backend, ContainerStatus] = field(default_factory=dict)
    endpoints: dict[Backend, ServingEndpoint] = field(default_factory=dict)
