"""Where schedulers get the fleet's nodes from: fresh reads, or a cache kept by watches.

Placement needs every node's three own znodes (enabled byte, ``alive``, reservation). For
a command-line tool, reading them afresh is fine (:class:`LiveNodes`). A control plane
placing many functions keeps them in memory instead (:class:`FleetCache`): kazoo
ChildrenWatch/DataWatch recipes keep the nodes and their own two znodes current, a
persistent watch each reservation znode, and what the control plane commits itself is
counted at once, as the multi-op is sent (at the versions it will give the reservation
znodes), so its next placement neither waits for the answer nor for a watch to fire:
placements pipeline. A change the watch reports is read, unless it is the echo of one this
process counted so (one event per change, in order: the count of its own changes not yet
reported says which): a kazoo DataWatch read every change again, its own included, three
reads per placement. Either way the multi-op is guarded by the reservation versions the
decision was made on: a stale cache can cost a retry, never an over-commit; the nodes of a
multi-op that failed are read again before the next placement. The cache's multi-ops are
sent in groups: placements decided while others are on their way share one ZooKeeper
transaction (:mod:`bismuth_core.groupcommit`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from . import layout
from .cluster import NodeView, read_nodes
from .groupcommit import GroupCommit
from .layout import NodeAlive, Reservation
from .scheduler import rank_key
from .zk import NoNodeError, Op, ZnodeStat, ZooKeeper, link
from .zkwatch import ChangeKind, PersistentWatches, WatchEvent, WatchHookMissing, WatchMode

log = logging.getLogger(__name__)


class NodeSource(Protocol):
    async def nodes(self, fresh: bool = False) -> Mapping[str, NodeView]:
        """Every node (without its containers); ``fresh`` after a lost race. A cache may
        give its live views: read what a placement needs before awaiting anything."""
        ...

    def ranked(self) -> Sequence[tuple[float, str]] | None:
        """Schedulable nodes as (-headroom, ip), best first, if the source keeps them so
        (placements then stop at the first that fit; the ranking as it is, to be read
        before awaiting anything); ``None`` otherwise."""
        ...

    def largest(self) -> tuple[float, int] | None:
        """The most cpus and the most memory (less the per-container overhead) a live node
        advertises, if the source keeps them; ``None`` otherwise."""
        ...

    def reserve(self, ops: Sequence[Op]) -> None:
        """Count the reservations of a multi-op about to be committed (before the answer)."""
        ...

    def committed(self, ops: Sequence[Op], results: Sequence[Any]) -> None:
        """Learn from a multi-op this process committed."""
        ...

    def rejected(self, ops: Sequence[Op]) -> None:
        """A multi-op given to :meth:`reserve` failed: what it would have reserved is not."""
        ...

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        """Commit a multi-op that places containers, as :meth:`ZooKeeper.commit` does."""
        ...


class LiveNodes:
    """Reads every node from ZooKeeper each time."""

    def __init__(self, zk: ZooKeeper) -> None:
        self.zk = zk

    async def nodes(self, fresh: bool = False) -> dict[str, NodeView]:
        return await read_nodes(self.zk, with_containers=False)

    def ranked(self) -> Sequence[tuple[float, str]] | None:
        return None

    def largest(self) -> tuple[float, int] | None:
        return None

    def reserve(self, ops: Sequence[Op]) -> None:
        return None

    def committed(self, ops: Sequence[Op], results: Sequence[Any]) -> None:
        return None

    def rejected(self, ops: Sequence[Op]) -> None:
        return None

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        return await self.zk.commit(ops)


@dataclass
class _Entry:
    enabled: bool | None = None  # None: node znode missing
    alive: NodeAlive | None = None
    reserved: Reservation | None = None
    version: int | None = None  # of the reservation znode
    watching: bool = True
    set_reserved: Any = None  # applies a read of the reservation znode

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

    def __init__(self, zk: ZooKeeper, observe: Callable[[int, float], None] | None = None) -> None:
        """``observe`` hears of each multi-op of placements answered (see GroupCommit)."""
        self.zk = zk
        self._entries: dict[str, _Entry] = {}  # touched on the event loop only
        self._views: dict[str, NodeView] = {}  # of the entries, kept as they change
        self._live = MappingProxyType(self._views)
        self._stale: set[str] = set()  # nodes a failed multi-op had counted on
        self._ranking: list[tuple[float, str]] = []  # schedulable nodes, best first
        self._rank: dict[str, tuple[float, str]] = {}  # each one's place in it
        self._largest: tuple[float, int] | None = None  # of live nodes; None: not known
        self._pending: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commits = GroupCommit(zk, observe=observe)
        # Reservation changes this process sent whose watch events have not come yet.
        self._echoes: dict[str, int] = {}
        self._watches: PersistentWatches | None = None  # None: DataWatch reads every change

    async def start(self) -> None:
        """Set the watches; returns once every node present now has been read."""
        self._loop = asyncio.get_running_loop()
        try:
            self._watches = PersistentWatches(self.zk.client)
        except WatchHookMissing as exc:
            log.warning("%s; the fleet cache reads every reservation change", exc.message)
        await asyncio.to_thread(ChildrenWatch, self.zk.client, layout.NODES, self._on_children)
        # The first children callback was queued before to_thread returned, and so was
        # each new DataWatch's first data: once the watch set-ups finish, all is loaded.
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def nodes(self, fresh: bool = False) -> Mapping[str, NodeView]:
        """The kept views, read-only and live: every placement reads them, so they are built
        as nodes change, and not copied per call (a thousand nodes' copy cost each create
        tens of microseconds). They change only on the event loop, so they hold still
        until the caller awaits."""
        if fresh:
            views = await read_nodes(self.zk, with_containers=False)
            self._sync_children(set(views))
            self._stale.clear()
            for ip, view in views.items():
                self._update(
                    ip,
                    self._entries[ip],
                    enabled=view.enabled,
                    alive=view.alive,
                    reserved=view.reserved,
                    version=view.containers_version,
                )
        elif self._stale:
            await self._reread_stale()
        return self._live

    def _update(self, ip: str, entry: _Entry, **fields: Any) -> None:
        if self._entries.get(ip) is not entry:
            return  # the node was removed meanwhile
        for name, value in fields.items():
            setattr(entry, name, value)
        if "alive" in fields or "enabled" in fields:
            self._largest = None
        view = entry.view(ip)
        if view is None:
            self._views.pop(ip, None)
        else:
            self._views[ip] = view
        self._rerank(ip, view)

    def _rerank(self, ip: str, view: NodeView | None) -> None:
        old = self._rank.pop(ip, None)
        if old is not None:
            del self._ranking[bisect.bisect_left(self._ranking, old)]
        capacity = view.capacity() if view is not None else None
        if capacity is not None and capacity.schedulable:
            key = self._rank[ip] = rank_key(capacity)
            bisect.insort(self._ranking, key)

    def ranked(self) -> Sequence[tuple[float, str]]:
        return self._ranking  # live, not copied: see nodes()

    def largest(self) -> tuple[float, int]:
        if self._largest is None:
            alive = [v.alive for v in self._views.values() if v.alive is not None]
            self._largest = (
                max((a.cpus for a in alive), default=0.0),
                max((a.memory - a.container_overhead for a in alive), default=0),
            )
        return self._largest

    async def _reread_stale(self) -> None:
        stale = sorted(self._stale)
        self._stale.clear()
        found = await asyncio.gather(
            *(self.zk.get_or_none(layout.containers_path(ip)) for ip in stale)
        )
        for ip, got in zip(stale, found, strict=True):
            entry = self._entries.get(ip)
            if entry is not None and ip not in self._stale:
                reserved = Reservation.decode(got[0]) if got else None
                version = got[1].version if got else None
                self._update(ip, entry, reserved=reserved, version=version)

    def reserve(self, ops: Sequence[Op]) -> None:
        """Count a multi-op's reservations at once, at the versions they will have: placements
        decided before ZooKeeper answers build on them, and their multi-ops, sent after this
        one on the same session, are applied after it."""
        for op in ops:
            ip, entry = self._reservation_entry(op)
            if entry is not None:
                version = op.version + 1 if op.kind == "set" and op.version >= 0 else 0
                self._update(ip, entry, reserved=Reservation.decode(op.data), version=version)
                if self._watches is not None:  # its event comes by the persistent watch
                    self._echoes[ip] = self._echoes.get(ip, 0) + 1

    def committed(self, ops: Sequence[Op], results: Sequence[Any]) -> None:
        """Write through the reservations this process just committed."""
        for op, result in zip(ops, results, strict=False):
            ip, entry = self._reservation_entry(op)
            if entry is None:
                continue
            version = result.version if isinstance(result, ZnodeStat) else 0
            if entry.version is None or version > entry.version:
                self._update(ip, entry, reserved=Reservation.decode(op.data), version=version)

    def rejected(self, ops: Sequence[Op]) -> None:
        """The nodes of a failed multi-op are read again before the next placement."""
        for op in ops:
            ip, entry = self._reservation_entry(op)
            if entry is not None:
                self._stale.add(ip)
                self._echo_heard(ip)  # none comes (if it was applied after all: read)

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        """Placements sent close together go to ZooKeeper as one multi-op, in the order
        they were counted (:mod:`bismuth_core.groupcommit`); each still fails alone."""
        return await self._commits.commit(ops)

    def _reservation_entry(self, op: Op) -> tuple[str, _Entry | None]:
        ip = layout.containers_owner(op.path) or ""
        return ip, self._entries.get(ip) if op.kind in ("set", "create") else None

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
            self._views.pop(ip, None)
            self._stale.discard(ip)
            self._rerank(ip, None)
            self._largest = None

    # A fresh read may add nodes before their ChildrenWatch event; the event then finds them
    # known. A removal seen by a fresh read is left to the watch.

    def _watch(self, ip: str, entry: _Entry) -> None:
        def watcher(apply: Any) -> Any:
            def on_data(data: bytes | None, stat: ZnodeStat | None) -> bool:
                self._call(apply, data, stat)
                return entry.watching  # False ends the watch

            return on_data

        def set_enabled(data: bytes | None, stat: ZnodeStat | None) -> None:
            enabled = None if stat is None else layout.decode_enabled(data)
            self._update(ip, entry, enabled=enabled)

        def set_alive(data: bytes | None, stat: ZnodeStat | None) -> None:
            self._update(ip, entry, alive=None if stat is None else NodeAlive.decode(data))

        def set_reserved(data: bytes | None, stat: ZnodeStat | None) -> None:
            if stat is None:
                self._update(ip, entry, reserved=None, version=None)
            elif entry.version is None or stat.version >= entry.version:
                self._update(ip, entry, reserved=Reservation.decode(data), version=stat.version)

        DataWatch(self.zk.client, layout.node_path(ip), watcher(set_enabled))
        DataWatch(self.zk.client, layout.alive_path(ip), watcher(set_alive))
        if self._watches is None:
            DataWatch(self.zk.client, layout.containers_path(ip), watcher(set_reserved))
            return
        path = layout.containers_path(ip)
        entry.set_reserved = set_reserved  # changes reported from now on are read
        try:
            self._watches.add(
                path,
                lambda event: self._call(self._reservation_changed, ip, entry, event),
                mode=WatchMode.PERSISTENT,
                on_rearmed=lambda: self._call(self._rearmed, ip, entry),
            ).get()  # in place before the first read: no change goes unseen
            try:
                data, stat = self.zk.client.get(path)
            except NoNodeError:
                data, stat = None, None
        except Exception as exc:  # connection trouble: the watch is added again on reconnect
            log.debug("reservation of %s not read: %r", ip, exc)
            self._call(self._rearmed, ip, entry)
            return
        self._call(set_reserved, data, stat)

    # --- the reservation watch (on the event loop) -------------------------------------------

    def _reservation_changed(self, ip: str, entry: _Entry, event: WatchEvent) -> None:
        if self._entries.get(ip) is not entry:
            return  # removed meanwhile
        if event.kind == ChangeKind.DELETED:
            entry.set_reserved(None, None)
        elif self._echoes.get(ip, 0) > 0:
            self._echo_heard(ip)  # this process's own change, counted when it was sent
        else:
            path = layout.containers_path(ip)
            apply = entry.set_reserved
            link(self.zk.client.get_async(path), lambda r: self._call(_read_into, apply, r))

    def _echo_heard(self, ip: str) -> None:
        left = self._echoes.get(ip, 0) - 1
        if left > 0:
            self._echoes[ip] = left
        else:
            self._echoes.pop(ip, None)

    def _rearmed(self, ip: str, entry: _Entry) -> None:
        """Connected again: changes made meanwhile were not reported: read it again."""
        self._echoes.pop(ip, None)
        if self._entries.get(ip) is entry:
            self._stale.add(ip)


def _read_into(apply: Any, result: Any) -> None:
    """Hand a reservation read's answer to ``apply(data, stat)``; a failed read leaves the
    cache as it is (a commit it misleads fails on its version and is read again)."""
    try:
        data, stat = result.get_nowait()
    except NoNodeError:
        data, stat = None, None
    except Exception as exc:  # connection trouble: the rearm reads it again
        log.debug("reservation read failed: %r", exc)
        return
    apply(data, stat)
