"""The agent's side of ZooKeeper: its ``alive`` znode, its desired containers, their status.

The agent writes only observed state: the ephemeral ``/node/<ip>/alive`` (recreated after a
session expires) and each container's ``status`` znode. Desired state (its container znodes
and their functions' definitions) is read, never written. The node's container znodes are
mirrored in memory (:class:`bismuth_core.subtree.SubtreeMirror`, one persistent recursive
watch on ``/node/<ip>/container``): a new one costs one read of it, and the mirror wakes the
reconcile loop once it has it; each pass then reads only the definitions of the functions
its containers run. Until the mirror is loaded (at start), and if the watch cannot be had,
a pass reads the children and every container znode itself, setting a watch that wakes the
loop on the next change. Every change of the session's state wakes a pass too.
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
from bismuth_core.subtree import SubtreeMirror
from bismuth_core.zk import NodeExistsError, NoNodeError, ZooKeeper
from bismuth_core.zkwatch import PersistentWatches, WatchHookMissing

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
        self._watches: PersistentWatches | None = None
        self._mirror: SubtreeMirror | None = None
        self._mirrored = False  # the mirror has walked the subtree once

    async def start(self) -> None:
        if await self.zk.exists(layout.node_path(self.ip)) is None:
            raise Unavailable(f"node {self.ip} is not provisioned (bismuthctl provision {self.ip})")
        wake = self.zk.threadsafe(self._wake)
        self._watcher = lambda _event: wake()  # one object: kazoo keeps it once per path
        self.zk.add_listener(self._on_state)
        await self.announce()
        await self._follow()

    async def _follow(self) -> None:
        try:
            self._watches = PersistentWatches(self.zk.client)
        except WatchHookMissing as exc:
            log.warning("%s; every pass reads the node's container znodes", exc.message)
            return
        root = layout.containers_path(self.ip)
        self._mirror = SubtreeMirror(
            self.zk,
            root,
            wants_data=lambda path: path != root,
            on_change=lambda _path: self._wake(),
            on_loaded=self._loaded,
            depth=1,  # not the status znodes below
        )
        await self._mirror.start(self._watches)

    def _loaded(self) -> None:
        self._mirrored = True
        self._wake()

    def stop(self) -> None:
        self._watcher = None  # reads set no watch any more; a watch set earlier fires once
        if self._mirror is not None:
            self._mirror.close()
        if self._watches is not None:
            self._watches.close()

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
        if not self.zk.connected:
            raise Unavailable("ZooKeeper is not connected")
        if self._mirror is not None and self._mirrored:
            found = self._from_mirror(self._mirror)
        else:
            found = await self._records()
        fids = sorted({fid for fid, _ in found.values()})
        definitions = dict(
            zip(fids, await asyncio.gather(*(self._definition(f) for f in fids)), strict=True)
        )
        return {
            cid: DesiredContainer(cid, fid, definition, committed)
            for cid, (fid, committed) in found.items()
            if (definition := definitions[fid]) is not None
        }

    def _from_mirror(self, mirror: SubtreeMirror) -> dict[uuid.UUID, tuple[uuid.UUID, float]]:
        root = layout.containers_path(self.ip)
        found: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}
        for name in mirror.children(root):
            path = f"{root}/{name}"
            cid, data = layout.parse_uuid(name), mirror.data(path)
            if cid is not None and data is not None:
                self._add_record(found, cid, data, mirror.ctime(path) or 0.0)
        return found

    async def _records(self) -> dict[uuid.UUID, tuple[uuid.UUID, float]]:
        """Each container znode's function and creation time, read from ZooKeeper."""
        names = await self.zk.children(layout.containers_path(self.ip), watch=self._watcher)
        cids = [cid for cid in map(layout.parse_uuid, names) if cid is not None]
        records = await asyncio.gather(
            *(self.zk.get_or_none(layout.container_path(self.ip, c)) for c in cids)
        )
        found: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}
        for cid, got in zip(cids, records, strict=True):
            if got is not None:
                self._add_record(found, cid, got[0], got[1].ctime / 1000)
        return found

    @staticmethod
    def _add_record(
        found: dict[uuid.UUID, tuple[uuid.UUID, float]], cid: uuid.UUID, data: bytes, ctime: float
    ) -> None:
        try:
            found[cid] = (ContainerRecord.decode(data).function_id, ctime)
        except ValueError:
            log.warning("undecodable container znode", extra={"container_id": cid})

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
