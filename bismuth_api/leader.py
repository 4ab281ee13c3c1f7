"""Background work done by exactly one API replica, chosen by a kazoo Election.

The leader finishes rollouts (an update's or a drain's old containers are removed once every
other backend of the function is ``Running``) and replaces the containers of lost nodes (a
node whose ``alive`` znode has been gone for ``node_loss_grace`` seconds). Each pass reads
what it needs afresh: the pending rollouts (``/rollout`` children) and every node's own
znodes, never every container. A kazoo ChildrenWatch on ``/rollout`` only wakes it early, as
does a change of a status a pending rollout waits for (a one-shot watch per status, set again
each pass), and a timer guarantees a pass every ``leader_interval`` seconds. State lives in
ZooKeeper, so a new leader picks up whatever an earlier one left half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from kazoo.client import KazooState
from kazoo.recipe.election import Election

from bismuth_core import layout, operations
from bismuth_core.cluster import read_function_or_none, read_node
from bismuth_core.errors import BismuthError, InsufficientCapacity
from bismuth_core.fleet import LiveNodes, NodeSource
from bismuth_core.layout import Backend
from bismuth_core.zk import ZooKeeper

log = logging.getLogger(__name__)

# Functions whose lost containers are replaced at once: their multi-ops pipeline (the fleet
# cache counts each placement as it is sent); one function's containers go one by one.
REPLACE_CONCURRENCY = 16


class NodeLossTracker:
    """Remembers since when each node has been without a live agent (pure; no I/O)."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self._dead_since: dict[str, float] = {}

    def observe(self, alive: dict[str, bool]) -> list[str]:
        """Record liveness of every node; return the nodes dead for the grace period."""
        now = self.clock()
        for ip, is_alive in alive.items():
            if is_alive:
                self._dead_since.pop(ip, None)
            else:
                self._dead_since.setdefault(ip, now)
        for ip in list(self._dead_since):
            if ip not in alive:
                del self._dead_since[ip]
        return sorted(ip for ip, t in self._dead_since.items() if now - t >= self.grace)

    def lost_since(self, ip: str) -> float | None:
        """Since when (clock time) node ``ip`` has been seen without a live agent, if it is."""
        return self._dead_since.get(ip)


class Leader:
    def __init__(
        self,
        zk: ZooKeeper,
        *,
        grace: float,
        interval: float,
        nodes: NodeSource | None = None,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.zk = zk
        self.nodes = nodes or LiveNodes(zk)
        self.lock = lock or asyncio.Lock()  # one change of the leader's at a time
        self.grace = grace
        self.interval = interval
        self.is_leader = False
        self.passes = 0
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        # Fed by every replica, leading or not: a standby that takes over knows since when
        # each node has been gone, so a node lost just before a failover waits out its grace
        # from the loss, not from the takeover.
        self.tracker = NodeLossTracker(grace)
        self._status_changed: Callable[..., None] = lambda *_: None  # set once leading
        self._election = Election(zk.client, layout.API_LEADER, identifier=str(uuid.uuid4()))

    async def run(self) -> None:
        """Contend for leadership until :meth:`stop`; lead while elected."""
        loop = asyncio.get_running_loop()
        self.zk.add_listener(self._on_state)

        def lead_blocking() -> None:
            asyncio.run_coroutine_threadsafe(self._lead(), loop).result()

        watching = asyncio.create_task(self._watch_nodes())
        try:
            await self._contend(lead_blocking)
        finally:
            watching.cancel()

    async def _watch_nodes(self) -> None:
        """Follow the nodes' liveness while another replica leads."""
        while not self._stopping:
            if not self.is_leader:
                with contextlib.suppress(BismuthError):
                    nodes = await self.nodes.nodes()
                    self.tracker.observe({ip: n.alive is not None for ip, n in nodes.items()})
            await asyncio.sleep(self.interval)

    async def _contend(self, lead_blocking: Callable[[], None]) -> None:
        while not self._stopping:
            try:
                await asyncio.to_thread(self._election.run, lead_blocking)
            except Exception as exc:
                log.warning("leader election interrupted: %r", exc)
            if not self._stopping:
                await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        self._stopping = True
        self._lost.set()
        self._wake.set()
        await asyncio.to_thread(self._election.cancel)

    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.LOST:
            self._lost.set()
        self._wake.set()

    async def _lead(self) -> None:
        self.is_leader = True
        self._lost.clear()
        log.info("this API replica leads background work")
        # One watcher for every status watched: ZooKeeper keeps it once per path.
        self._status_changed = self.zk.threadsafe(lambda *_: self._wake.set())
        unwatch = await self.zk.watch_children(layout.ROLLOUTS, self._wake.set)
        try:
            while not self._lost.is_set() and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()
                if self._lost.is_set() or self._stopping:
                    break
                try:
                    await self.run_pass(self.tracker)
                except BismuthError as exc:
                    log.warning("leader pass incomplete: %s", exc.message)
        finally:
            unwatch()
            self.is_leader = False
            log.info("this API replica no longer leads")

    async def run_pass(self, tracker: NodeLossTracker) -> None:
        """One full pass: finish rollouts, then replace containers of lost nodes."""
        self.passes += 1
        for name in await self.zk.children(layout.ROLLOUTS):
            fid = layout.parse_uuid(name)
            if fid is not None:
                await self._watch_statuses(fid)
                async with self.lock:
                    await operations.finish_rollout(self.zk, fid)
        nodes = await self.nodes.nodes()
        lost = tracker.observe({ip: n.alive is not None for ip, n in nodes.items()})
        if lost:
            await self._replace_lost(lost)

    async def _replace_lost(self, ips: list[str]) -> None:
        """Replace every container of the lost nodes ``ips``: each node read once, the
        functions' containers moved one function at a time, several functions at once."""
        views = await asyncio.gather(*(read_node(self.zk, ip) for ip in ips))
        by_function: dict[uuid.UUID | None, list[Backend]] = {}
        for view in (v for v in views if v is not None):
            for cid, container in sorted(view.containers.items()):
                fid = container.record.function_id if container.record else None
                by_function.setdefault(fid, []).append(Backend(view.ip, cid))
        limit = asyncio.Semaphore(REPLACE_CONCURRENCY)

        async def one_function(fid: uuid.UUID | None, backends: list[Backend]) -> None:
            async with limit:
                for backend in backends:
                    await self._replace(backend, fid)

        await asyncio.gather(*(one_function(f, b) for f, b in by_function.items()))

    async def _watch_statuses(self, fid: uuid.UUID) -> None:
        """Wake on the next change of a status the rollout of ``fid`` waits for: its new
        containers' turning ``Running`` finishes it at once, not at the next timer pass.
        Set before the statuses are read, so no change between the two goes unseen."""
        view = await read_function_or_none(self.zk, fid)
        for backend in view.active if view is not None else ():
            path = layout.status_path(backend.ip, backend.container_id)
            await self.zk.exists(path, watch=self._status_changed)

    async def _replace(self, backend: Backend, fid: uuid.UUID | None) -> None:
        try:
            fresh = await operations.move_container(
                self.zk, backend, lost=True, source=self.nodes, function_id=fid
            )
        except InsufficientCapacity as exc:
            log.warning(
                "cannot replace container of lost node: %s",
                exc.message,
                extra={"node": backend.ip, "container_id": backend.container_id},
            )
            return
        log.info(
            "replaced container of lost node with %s",
            fresh,
            extra={"node": backend.ip, "container_id": backend.container_id},
        )
