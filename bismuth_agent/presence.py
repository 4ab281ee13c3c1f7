"""The agent's side of ZooKeeper: its ``alive`` znode, its desired containers, their status.

The agent writes only observed state: the ephemeral ``/node/<ip>/alive`` (recreated after a
session expires) and each container's ``status`` znode. Desired state (its container znodes
and their functions' definitions) is read, never written. Each read of the node's
container znode's children sets a watch that only wakes the reconcile loop: a new container
wakes it as ZooKeeper's event arrives, and the pass it wakes reads the children (setting the
watch again). Every change of the session's state wakes a pass too, so a new session's first
pass sets the watch anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooState

from bismuth_core import jsondoc, layout
from bismuth_core.cluster import STORED_LIMITS
from bismuth_core.definition import FunctionDefinition, parse_definition
from bismuth_core.errors import BismuthError, Unavailable
from bismuth_core.layout import ContainerRecord, ContainerStatus, NodeAlive, ServingEndpoint
from bismuth_core.zk import NodeExistsError, NoNodeError, ZooKeeper

from .model import DesiredContainer

log = logging.getLogger(__name__)


class NodePresence:
    """Announces this node as alive and follows what ZooKeeper wants it to run
    (implements :class:`.model.Presence`)."""

    def __init__(self, zk: ZooKeeper, ip: str, alive: NodeAlive, wake: Callable[[], None]):
        self.zk = zk
        self.ip = ip
        self.alive = alive
        self._wake = wake
        self._watcher: Callable[[Any], None] | None = None  # wakes the loop from kazoo's thread
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if await self.zk.exists(layout.node_path(self.ip)) is None:
            raise Unavailable(f"node {self.ip} is not provisioned (bismuthctl provision {self.ip})")
        wake = self.zk.threadsafe(self._wake)
        self._watcher = lambda _event: wake()  # one object: kazoo keeps it once per path
        self.zk.add_listener(self._on_state)
        await self.announce()

    def stop(self) -> None:
        self._watcher = None  # reads set no watch any more; a watch set earlier fires once

    @property
    def connected(self) -> bool:
        return self.zk.connected

    async def announce(self, containers: int | None = None) -> None:
        """Create (or refresh) the ephemeral ``alive`` znode with capacity and count."""
        if containers is not None:
            self.alive = dataclasses.replace(self.alive, containers=containers)
        data = self.alive.encode()
        try:
            await self.zk.create(layout.alive_path(self.ip), data, ephemeral=True)
        except NodeExistsError:
            got = await self.zk.get_or_none(layout.alive_path(self.ip))
            if got is not None and got[1].ephemeralOwner == self.zk.client.client_id[0]:
                await self.zk.set(layout.alive_path(self.ip), data)
            # else: a previous session's znode, gone when that session expires; the
            # reconnect after that calls announce again

    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            task = asyncio.ensure_future(self._reannounce())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._wake()

    async def _reannounce(self) -> None:
        with contextlib.suppress(Unavailable, NoNodeError):
            await self.announce()

    async def desired(self) -> dict[uuid.UUID, DesiredContainer]:
        """This node's container znodes with their functions' definitions (all read at once)."""
        names = await self.zk.children(layout.containers_path(self.ip), watch=self._watcher)
        cids = [cid for cid in map(layout.parse_uuid, names) if cid is not None]
        records = await asyncio.gather(
            *(self.zk.get_or_none(layout.container_path(self.ip, c)) for c in cids)
        )
        found: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}
        for cid, got in zip(cids, records, strict=True):
            if got is None:
                continue
            try:
                found[cid] = (ContainerRecord.decode(got[0]).function_id, got[1].ctime / 1000)
            except ValueError:
                log.warning("undecodable container znode", extra={"container_id": cid})
        fids = sorted({fid for fid, _ in found.values()})
        definitions = dict(
            zip(fids, await asyncio.gather(*(self._definition(f) for f in fids)), strict=True)
        )
        return {
            cid: DesiredContainer(cid, fid, definition, committed)
            for cid, (fid, committed) in found.items()
            if (definition := definitions[fid]) is not None
        }

    async def _definition(self, fid: uuid.UUID) -> FunctionDefinition | None:
        got = await self.zk.get_or_none(layout.function_path(fid))
        if got is None:
            return None
        try:
            return parse_definition(jsondoc.loads(got[0], "stored definition"), STORED_LIMITS)
        except (ValueError, BismuthError) as exc:  # a bad definition runs nothing
            log.warning("undecodable definition: %s", exc, extra={"function_id": fid})
            return None

    async def status(self, cid: uuid.UUID) -> ContainerStatus | None:
        got = await self.zk.get_or_none(layout.status_path(self.ip, cid))
        return layout.decode_status(got[0]) if got else None

    async def set_status(
        self, cid: uuid.UUID, status: ContainerStatus, endpoint: ServingEndpoint | None = None
    ) -> None:
        """Write a container's status (and where it serves, once Running); nothing if its
        container znode is gone."""
        path = layout.status_path(self.ip, cid)
        data = layout.encode_status(status, endpoint)
        try:
            await self.zk.set(path, data)
        except NoNodeError:
            try:
                await self.zk.create(path, data)
            except NodeExistsError:  # made meanwhile (an earlier agent's write): replace it
                with contextlib.suppress(NoNodeError):
                    await self.zk.set(path, data)
            except NoNodeError:
                pass  # the container znode is gone
