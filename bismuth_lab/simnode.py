"""Simulated agents: many nodes in one process, each with a ZooKeeper session of its own.

A :class:`SimNode` does on ZooKeeper what ``bismuthd`` does, without containers: it holds
its node's ephemeral ``alive`` znode (capacity, version and pool, as a real agent
advertises them), mirrors its node's container znodes as the agent does (one persistent
recursive watch, :class:`bismuth_core.subtree.SubtreeMirror`: a new container costs one
read of its znode), reads each new container's function definition once, writes
``Starting`` at once and, after the node's ``start_delay``, the node's outcome (``Running``
with a serving endpoint, or ``Failed``). Containers removed from ZooKeeper are forgotten.
Stopping a node closes its session, so its ``alive`` znode goes as when an agent's host is
lost.

The nodes of a process share one kazoo handler (:class:`SharedHandler`): each session keeps
its own connection thread, but not two worker threads of its own as well (a thousand
sessions were three thousand threads, and their turns, not ZooKeeper, set the pace).

Every container of a process "serves" on one small HTTP server of that process (its
endpoint in the ``Running`` status), so a frontend routing to any of them gets an answer:
``200`` with the body ``ok``.

:func:`serve_commands` runs such a process for :class:`bismuth_lab.fleetsim.Fleet`: one JSON
command per line on stdin, one JSON answer per line on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooState

from bismuth_core import jsondoc, layout, operations
from bismuth_core.cluster import STORED_LIMITS
from bismuth_core.definition import parse_definition
from bismuth_core.errors import BismuthError
from bismuth_core.layout import ContainerRecord, ContainerStatus, NodeAlive, ServingEndpoint
from bismuth_core.subtree import SubtreeMirror
from bismuth_core.zk import NodeExistsError, NoNodeError, PollingHandler, ZkAccess, ZooKeeper
from bismuth_core.zkwatch import PersistentWatches

log = logging.getLogger(__name__)

SIM_VERSION = "fleetsim"


class SharedHandler(PollingHandler):
    """One kazoo handler for many clients: a client's ``stop`` leaves its worker threads
    running for the others; :meth:`close` ends them."""

    def stop(self) -> None:
        pass  # kazoo stops its handler with every client

    def close(self) -> None:
        super().stop()


@dataclass
class Behaviour:
    """How a node's containers start: after ``start_delay`` seconds, as ``outcome``;
    ``idle``: not at all (an agent that is alive but does nothing; benchmarks use it to
    measure the control plane without the simulated agents' own work)."""

    start_delay: float = 0.0
    outcome: ContainerStatus = ContainerStatus.RUNNING
    idle: bool = False


@dataclass
class NodeCounts:
    containers: int = 0  # container znodes the node knows of
    running: int = 0  # of them, written Running
    failed: int = 0
    last_running: float = 0.0  # wall-clock time of its latest Running write


class SimNode:
    """One simulated agent; ``await start()``, then ``await stop()`` (its session ends)."""

    def __init__(
        self,
        hosts: str,
        env: str,
        ip: str,
        access: ZkAccess,
        *,
        alive: NodeAlive,
        endpoint: ServingEndpoint | None,
        behaviour: Behaviour,
        session_timeout: float = 10.0,
        handler: PollingHandler | None = None,
    ) -> None:
        self.ip = ip
        self.zk = ZooKeeper(
            hosts, env, access=access, session_timeout=session_timeout, handler=handler
        )
        self.alive = alive
        self.endpoint = endpoint
        self.behaviour = behaviour
        self.statuses: dict[uuid.UUID, ContainerStatus] = {}
        self.last_running = 0.0
        self._definitions: dict[uuid.UUID, bool] = {}  # function id -> definition readable
        self._wake = asyncio.Event()
        self._names: dict[str, uuid.UUID | None] = {}  # container znode names seen
        self._tasks: set[asyncio.Task[None]] = set()
        self._root = layout.containers_path(ip)
        self._watches: PersistentWatches | None = None
        self._mirror: SubtreeMirror | None = None

    async def start(self) -> None:
        await self.zk.start()
        await operations.provision(self.zk, self.ip)  # as the deploy does for a new host
        self.zk.add_listener(self._on_state)
        await self._announce()
        self._watches = PersistentWatches(self.zk.client)
        self._mirror = SubtreeMirror(
            self.zk,
            self._root,
            wants_data=lambda path: path != self._root,
            on_change=lambda _path: self._wake.set(),
            on_loaded=self._wake.set,
            depth=1,  # not the status znodes below
        )
        await self._mirror.start(self._watches)
        self._spawn(self._follow())

    async def stop(self) -> None:
        """The node is lost: work ends, the session closes (``alive`` is deleted)."""
        if self._mirror is not None:
            self._mirror.close()
        if self._watches is not None:
            self._watches.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.zk.stop()

    def counts(self) -> NodeCounts:
        values = list(self.statuses.values())
        return NodeCounts(
            containers=len(values),
            running=values.count(ContainerStatus.RUNNING),
            failed=values.count(ContainerStatus.FAILED),
            last_running=self.last_running,
        )

    async def set_status(self, cid: uuid.UUID, status: ContainerStatus) -> None:
        """Write ``status`` for container ``cid`` (with the endpoint when Running)."""
        if cid not in self.statuses:
            return
        endpoint = self.endpoint if status == ContainerStatus.RUNNING else None
        data = layout.encode_status(status, endpoint)
        path = layout.status_path(self.ip, cid)
        try:
            if self.statuses[cid] == ContainerStatus.INVALID:  # none written yet: one op
                try:
                    await self.zk.create(path, data)
                except NodeExistsError:  # written before this session
                    await self.zk.set(path, data)
            else:
                await self.zk.set(path, data)
        except NoNodeError:  # the container znode is gone: nothing to report on
            return
        self.statuses[cid] = status
        if status == ContainerStatus.RUNNING:
            self.last_running = time.time()

    # --- following ZooKeeper -------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self) -> None:
        with contextlib.suppress(NodeExistsError):
            await self.zk.create(layout.alive_path(self.ip), self.alive.encode(), ephemeral=True)

    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            self._spawn(self._reannounce())

    async def _reannounce(self) -> None:
        with contextlib.suppress(BismuthError, NoNodeError):
            await self._announce()

    async def _follow(self) -> None:
        """Start what is new among the mirrored container znodes, forget what is gone (the
        mirror walks the node again after a reconnect, and wakes this then)."""
        assert self._mirror is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._sync(set(self._mirror.children(self._root)))

    def _sync(self, names: set[str]) -> None:
        """Forget the containers gone from ``names``, start the new ones. Only names not
        seen before are parsed: a node's list grows with its containers, and every new one
        delivers all of them again."""
        for name in self._names.keys() - names:
            cid = self._names.pop(name)
            if cid is not None:
                self.statuses.pop(cid, None)
        for name in names - self._names.keys():
            cid = self._names[name] = layout.parse_uuid(name)
            if cid is None or cid in self.statuses:
                continue
            self.statuses[cid] = ContainerStatus.INVALID
            if not self.behaviour.idle:
                self._spawn(self._start_container(cid))

    async def _start_container(self, cid: uuid.UUID) -> None:
        """What the agent does for a new container, minus the container itself."""
        try:
            if not await self._runnable(cid):
                return
            await self.set_status(cid, ContainerStatus.STARTING)
            if self.behaviour.start_delay:
                await asyncio.sleep(self.behaviour.start_delay)
            await self.set_status(cid, self.behaviour.outcome)
        except BismuthError as exc:  # ZooKeeper away: the next pass after a reconnect
            log.debug("container start interrupted: %s", exc, extra={"container_id": cid})
            self.statuses.pop(cid, None)
            self._names.pop(str(cid), None)

    async def _runnable(self, cid: uuid.UUID) -> bool:
        assert self._mirror is not None
        record = self._mirror.data(layout.container_path(self.ip, cid))
        if record is None:  # not read yet (its name came in a listing): read it here
            got = await self.zk.get_or_none(layout.container_path(self.ip, cid))
            if got is None:
                return False
            record = got[0]
        fid = ContainerRecord.decode(record).function_id
        if fid not in self._definitions:
            raw = await self.zk.get_or_none(layout.function_path(fid))
            if raw is None:
                return False  # the function is gone: the agent runs nothing
            try:
                parse_definition(jsondoc.loads(raw[0], "definition"), STORED_LIMITS)
                self._definitions[fid] = True
            except (TypeError, ValueError, BismuthError):
                return False  # an unreadable definition: the agent runs nothing
        return True


# --- the worker process -------------------------------------------------------------------


class NodeGroup:
    """The nodes of one process, and the commands :class:`~bismuth_lab.fleetsim.Fleet` sends."""

    def __init__(self, hosts: str, env: str, access: ZkAccess, endpoint: ServingEndpoint) -> None:
        self.hosts, self.env, self.access, self.endpoint = hosts, env, access, endpoint
        self.nodes: dict[str, SimNode] = {}
        self.handler = SharedHandler()

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if op == "start":
            return await self._start(command)
        if op == "stop":
            return await self._stop(command["nodes"])
        if op == "behave":
            return self._behave(command)
        if op == "fail":
            return await self._fail(command["containers"])
        if op == "stats":
            return self._stats()
        raise ValueError(f"unknown command {op!r}")

    async def _start(self, command: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        alive = NodeAlive(
            float(command.get("cpus", 64.0)),
            int(command.get("memory", 256 << 30)),
            SIM_VERSION,
            container_overhead=int(command.get("container_overhead", 0)),
        )
        limit = asyncio.Semaphore(32)

        async def one(ip: str) -> None:
            node = SimNode(
                self.hosts,
                self.env,
                ip,
                self.access,
                alive=alive,
                endpoint=self.endpoint,
                behaviour=_behaviour(command),
                session_timeout=float(command.get("session_timeout", 10.0)),
                handler=self.handler,
            )
            async with limit:
                await node.start()
            self.nodes[ip] = node

        await asyncio.gather(*(one(ip) for ip in command["nodes"] if ip not in self.nodes))
        return {"nodes": len(self.nodes), "seconds": time.monotonic() - started}

    async def _stop(self, ips: list[str]) -> dict[str, Any]:
        gone = [self.nodes.pop(ip) for ip in ips if ip in self.nodes]
        await asyncio.gather(*(node.stop() for node in gone))
        return {"stopped": len(gone), "at": time.time()}

    def _behave(self, command: dict[str, Any]) -> dict[str, Any]:
        ips = command.get("nodes") or list(self.nodes)
        for ip in ips:
            if ip in self.nodes:
                self.nodes[ip].behaviour = _behaviour(command)
        return {"nodes": len(ips)}

    async def _fail(self, containers: list[list[str]]) -> dict[str, Any]:
        failed = 0
        for ip, cid in containers:
            node = self.nodes.get(ip)
            if node is not None and uuid.UUID(cid) in node.statuses:
                await node.set_status(uuid.UUID(cid), ContainerStatus.FAILED)
                failed += 1
        return {"failed": failed}

    def _stats(self) -> dict[str, Any]:
        counts = [node.counts() for node in self.nodes.values()]
        return {
            "nodes": len(counts),
            "containers": sum(c.containers for c in counts),
            "running": sum(c.running for c in counts),
            "failed": sum(c.failed for c in counts),
            "last_running": max((c.last_running for c in counts), default=0.0),
        }

    async def close(self) -> None:
        await self._stop(list(self.nodes))
        self.handler.close()


def _behaviour(command: dict[str, Any]) -> Behaviour:
    outcome = ContainerStatus[str(command.get("outcome", "running")).upper()]
    return Behaviour(float(command.get("start_delay", 0.0)), outcome, bool(command.get("idle")))


async def serve_commands(group: NodeGroup, reader: asyncio.StreamReader) -> None:
    """Answer each command line on ``reader`` with one line on stdout, until EOF or quit."""
    while line := await reader.readline():
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        try:
            answer = {"ok": True, **await group.handle(command)}
        except Exception as exc:  # the driver shows it; the process keeps serving
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
