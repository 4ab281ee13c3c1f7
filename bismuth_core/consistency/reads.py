"""Fresh reads of the subjects the consistency checks judge, and the piecewise scan.

Every read here is taken now, znode by znode, not as one snapshot: a check judges a
candidate found by :func:`scan` again on fresh reads before reporting or repairing it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from .. import jsondoc, layout
from ..cluster import STORED_LIMITS
from ..definition import parse_definition
from ..errors import InvalidRequest
from ..layout import Backend, ContainerRecord
from ..zk import ZooKeeper


@dataclass(frozen=True)
class Listed:
    """A packed backend list znode; ``backends`` None if its data cannot be decoded."""

    backends: tuple[Backend, ...] | None
    version: int


@dataclass(frozen=True)
class FunctionState:
    """A function's znodes as read now; ``None`` fields are missing or undecodable."""

    id: uuid.UUID
    version: int | None  # None: no function znode
    hostnames: frozenset[str] | None  # None: definition missing or undecodable
    backends: Listed | None
    retiring: Listed | None

    @property
    def exists(self) -> bool:
        return self.version is not None

    def lists(self) -> set[Backend] | None:
        """Backends the function lists (active and retiring); None if that is unknowable."""
        groups = [g for g in (self.backends, self.retiring) if g is not None]
        if any(g.backends is None for g in groups):
            return None
        return {b for g in groups for b in g.backends or ()}


@dataclass(frozen=True)
class ContainerState:
    backend: Backend
    version: int
    function_id: uuid.UUID | None  # None: data cannot be decoded


@dataclass(frozen=True)
class Tree:
    """What the scan read: containers first, then every function they or the tree name,
    the routes and the node addresses."""

    containers: list[ContainerState]
    functions: dict[uuid.UUID, FunctionState]
    routes: dict[str, uuid.UUID | None]  # hostname -> function (None: undecodable)
    ips: list[str]

    @property
    def present(self) -> set[Backend]:
        return {c.backend for c in self.containers}


async def read_listed(zk: ZooKeeper, path: str) -> Listed | None:
    got = await zk.get_or_none(path)
    if got is None:
        return None
    try:
        return Listed(layout.unpack_backends(got[0]), got[1].version)
    except ValueError:
        return Listed(None, got[1].version)


def _hostnames(data: bytes) -> frozenset[str] | None:
    try:
        stored = jsondoc.loads(data, "stored definition")
        return frozenset(parse_definition(stored, STORED_LIMITS).routes)
    except (ValueError, InvalidRequest):
        return None


async def read_function(zk: ZooKeeper, fid: uuid.UUID) -> FunctionState:
    got, backends, retiring = await asyncio.gather(
        zk.get_or_none(layout.function_path(fid)),
        read_listed(zk, layout.backends_path(fid)),
        read_listed(zk, layout.retiring_path(fid)),
    )
    if got is None:
        return FunctionState(fid, None, None, backends, retiring)
    return FunctionState(fid, got[1].version, _hostnames(got[0]), backends, retiring)


async def read_container(zk: ZooKeeper, backend: Backend) -> ContainerState | None:
    got = await zk.get_or_none(layout.container_path(backend.ip, backend.container_id))
    if got is None:
        return None
    try:
        fid: uuid.UUID | None = ContainerRecord.decode(got[0]).function_id
    except ValueError:
        fid = None
    return ContainerState(backend, got[1].version, fid)


async def read_route(zk: ZooKeeper, host: str) -> tuple[uuid.UUID | None, int] | None:
    """(function, version) of a route; None if there is none, function None if undecodable."""
    got = await zk.get_or_none(layout.route_path(host))
    return None if got is None else (layout.decode_route(got[0]), got[1].version)


async def function_exists(zk: ZooKeeper, fid: uuid.UUID) -> bool:
    return await zk.exists(layout.function_path(fid)) is not None


async def child_ids(zk: ZooKeeper, root: str) -> list[uuid.UUID]:
    """The UUID-named children of ``root`` (others are not Bismuth's)."""
    return [f for f in map(layout.parse_uuid, await zk.children(root)) if f]


async def node_ips(zk: ZooKeeper) -> list[str]:
    return [ip for ip in map(layout.parse_ipv4, await zk.children(layout.NODES)) if ip]


async def _node_backends(zk: ZooKeeper, ip: str) -> list[Backend]:
    names = await zk.children(layout.containers_path(ip))
    return [Backend(ip, cid) for cid in map(layout.parse_uuid, names) if cid is not None]


async def scan(zk: ZooKeeper) -> Tree:
    """The tree, piece by piece; containers are read before the functions."""
    ips = await node_ips(zk)
    per_node = await asyncio.gather(*(_node_backends(zk, ip) for ip in ips))
    states = await asyncio.gather(*(read_container(zk, b) for bs in per_node for b in bs))
    containers = [s for s in states if s is not None]
    fids = set(await child_ids(zk, layout.FUNCTIONS))
    fids |= {c.function_id for c in containers if c.function_id is not None}
    functions = await asyncio.gather(*(read_function(zk, f) for f in sorted(fids)))
    names = await zk.children(layout.ROUTES)
    raws = await asyncio.gather(*(zk.get_or_none(layout.route_path(n)) for n in names))
    routes = {n: layout.decode_route(r[0]) for n, r in zip(names, raws, strict=True) if r}
    return Tree(containers, {f.id: f for f in functions}, routes, ips)
