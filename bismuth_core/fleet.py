"""Where schedulers get the fleet's nodes from: fresh reads, or a cache kept by watches.

Placement needs every node's three own znodes (enabled byte, ``alive``, reservation). For
a command-line tool, reading them afresh is fine (:class:`LiveNodes`). A control plane
placing many functions keeps them in memory instead (:class:`FleetCache`): kazoo
ChildrenWatch/DataWatch recipes keep it current, and what the control plane commits itself
is written through at once, so its next placement does not wait for a watch to fire.
Either way the multi-op is guarded by the reservation versions the decision was made on:
a stale cache can cost a retry, never an over-commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from . import layout
from .cluster import NodeView, read_nodes
from .layout import NodeAlive, Reservation
from .zk import Op, ZnodeStat, ZooKeeper

log = logging.getLogger(__name__)


class NodeSource(Protocol):
    async def nodes(self, fresh: bool = False) -> dict[str, NodeView]:
        """Every node (without its containers); ``fresh`` after a lost race."""
        ...

    def committed(self, ops: Sequence[Op], results: Sequence[Any]) -> None:
        """Learn from a multi-op this process committed."""
        ...


class LiveNodes:
    """Reads every node from ZooKeeper each time."""

    def __init__(self, zk: ZooKeeper) -> None:
        self.zk = zk

    async def nodes(self, fresh: bool = False) -> dict[str, NodeView]:
        return await read_nodes(self.zk, with_containers=False)

    def committed(self, ops: Sequence[Op], results: Sequence[Any]) -> None:
        return None


@dataclass
class _Entry:
    enabled: bool | None = None  # None: node znode missing
    alive: NodeAlive | None = None
    reserved: Reservation | None = None
    version: int | None = None  # of the reservation znode
    watching: bool = True

    def view(self, ip: str) -> NodeView | None:
        if self.enabled is None:
            return None
        return NodeView(
            ip=ip,
            enabled=self.enabled,
            alive=self.alive,
            containers_version=self.version,
            reserved=self.reserved or Reservation(),
        )


class FleetCache:
    """Every node's own znodes, kept current by kazoo watches; reads never block."""

    def __init__(self, zk: ZooKeeper) -> None:
        self.zk = zk
        self._entries: dict[str, _Entry] = {}  # touched on the event loop only
        self._pending: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Set the watches; returns once every node present now has been read."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(ChildrenWatch, self.zk.client, layout.NODES, self._on_children)
        # The first children callback was queued before to_thread returned, and so was
        # each new DataWatch's first data: once the watch set-ups finish, all is loaded.
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def nodes(self, fresh: bool = False) -> dict[str, NodeView]:
        if fresh:
            views = await read_nodes(self.zk, with_containers=False)
            self._sync_children(set(views))
            for ip, view in views.items():
                entry = self._entries[ip]
                entry.enabled, entry.alive = view.enabled, view.alive
                entry.reserved, entry.version = view.reserved, view.containers_version
        return {ip: v for ip, e in self._entries.items() if (v := e.view(ip)) is not None}

    def committed(self, ops: Sequence[Op], results: Sequence[Any]) -> None:
        """Write through the reservations this process just committed."""
        for op, result in zip(ops, results, strict=False):
            ip = layout.containers_owner(op.path)
            entry = self._entries.get(ip) if ip else None
            if entry is None or op.kind not in ("set", "create"):
                continue
            version = result.version if isinstance(result, ZnodeStat) else 0
            if entry.version is None or version > entry.version:
                entry.reserved, entry.version = Reservation.decode(op.data), version

    # --- watch callbacks: kazoo threads hand everything to the event loop --------------

    def _call(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def _on_children(self, children: list[str]) -> None:
        self._call(self._sync_children, {ip for ip in map(layout.parse_ipv4, children) if ip})

    def _sync_children(self, ips: set[str]) -> None:
        assert self._loop is not None
        for ip in ips - set(self._entries):
            entry = self._entries.setdefault(ip, _Entry())
            # a DataWatch reads its znode as it is made: not on the event loop
            future = self._loop.run_in_executor(None, self._watch, ip, entry)
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)
        for ip in set(self._entries) - ips:
            self._entries.pop(ip).watching = False

    # A fresh read may add nodes before their ChildrenWatch event; the event then finds them
    # known. A removal seen by a fresh read is left to the watch.

    def _watch(self, ip: str, entry: _Entry) -> None:
        def watcher(apply: Any) -> Any:
            def on_data(data: bytes | None, stat: ZnodeStat | None) -> bool:
                self._call(apply, data, stat)
                return entry.watching  # False ends the watch

            return on_data

        def set_enabled(data: bytes | None, stat: ZnodeStat | None) -> None:
            entry.enabled = None if stat is None else layout.decode_enabled(data)

        def set_alive(data: bytes | None, stat: ZnodeStat | None) -> None:
            entry.alive = None if stat is None else NodeAlive.decode(data)

        def set_reserved(data: bytes | None, stat: ZnodeStat | None) -> None:
            if stat is None:
                entry.reserved, entry.version = None, None
            elif entry.version is None or stat.version >= entry.version:
                entry.reserved, entry.version = Reservation.decode(data), stat.version

        DataWatch(self.zk.client, layout.node_path(ip), watcher(set_enabled))
        DataWatch(self.zk.client, layout.alive_path(ip), watcher(set_alive))
        DataWatch(self.zk.client, layout.containers_path(ip), watcher(set_reserved))
