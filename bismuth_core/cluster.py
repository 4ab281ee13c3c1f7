"""Read views of cluster state from ZooKeeper.

Each ``read_*`` call returns frozen snapshots with the znode versions needed to guard the
multi-ops in :mod:`bismuth_core.operations` against concurrent writers.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import jsondoc, layout
from .definition import DefinitionLimits, FunctionDefinition, parse_definition
from .errors import NotFound
from .layout import Backend, ContainerRecord, ContainerStatus, NodeAlive, Reservation
from .scheduler import NodeCapacity
from .zk import ZooKeeper

# Definitions already in ZooKeeper were validated on the way in (bounds and policy as they
# were then); re-read them leniently.
STORED_LIMITS = DefinitionLimits(cpu_max=math.inf, max_instances=1_000_000, enforce_policy=False)

PENDING = "Pending"  # no status znode yet: the agent has not picked the container up


@dataclass(frozen=True)
class ContainerView:
    ip: str
    container_id: uuid.UUID
    record: ContainerRecord | None
    status: ContainerStatus | None = None

    @property
    def backend(self) -> Backend:
        return Backend(self.ip, self.container_id)


@dataclass(frozen=True)
class NodeView:
    ip: str
    enabled: bool
    alive: NodeAlive | None
    containers: dict[uuid.UUID, ContainerView] = field(default_factory=dict)
    containers_version: int | None = None  # None: the container znode is missing
    reserved: Reservation = field(default_factory=Reservation)

    def capacity(self) -> NodeCapacity:
        return self._capacity

    @functools.cached_property
    def _capacity(self) -> NodeCapacity:  # views are kept and read for every placement
        alive = self.alive or NodeAlive(0, 0)
        return NodeCapacity(
            ip=self.ip,
            cpus=alive.cpus,
            memory=alive.memory,
            reserved_cpu=self.reserved.cpu,
            reserved_memory=self.reserved.memory,
            containers=self.reserved.containers,
            overhead=alive.container_overhead,
            enabled=self.enabled,
            alive=self.alive is not None,
        )

    def to_json(self) -> dict[str, object]:
        cap = self.capacity()
        return {
            "ip": self.ip,
            "enabled": self.enabled,
            "alive": self.alive is not None,
            "version": self.alive.version if self.alive else None,
            "cpus": cap.cpus,
            "memory": cap.memory,
            "reserved_cpu": round(cap.reserved_cpu, 6),
            "reserved_memory": cap.reserved_memory,
            "containers": self.reserved.containers,
            "pool": (self.alive.pool or None) if self.alive else None,
        }


@dataclass(frozen=True)
class FunctionView:
    id: uuid.UUID
    definition: FunctionDefinition
    version: int
    backends: tuple[Backend, ...]
    backends_version: int
    retiring: tuple[Backend, ...] = ()
    retiring_version: int | None = None  # None: no retiring znode
    owner: uuid.UUID | None = None  # its tenant; None: made before tenants, not adopted yet

    @property
    def active(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b not in self.retiring)


async def read_node(
    zk: ZooKeeper, ip: str, with_status: bool = False, with_containers: bool = True
) -> NodeView | None:
    """Node ``ip``; ``with_containers=False`` reads only its three own znodes (scheduling)."""
    node, alive_raw, containers = await asyncio.gather(
        zk.get_or_none(layout.node_path(ip)),
        zk.get_or_none(layout.alive_path(ip)),
        zk.get_or_none(layout.containers_path(ip)),
    )
    if node is None:
        return None
    views: dict[uuid.UUID, ContainerView] = {}
    if containers is not None and with_containers:
        names = await zk.children(layout.containers_path(ip))
        cids = [cid for cid in map(layout.parse_uuid, names) if cid is not None]
        loaded = await asyncio.gather(*(_read_container(zk, ip, c, with_status) for c in cids))
        views = {v.container_id: v for v in loaded if v is not None}
    return NodeView(
        ip=ip,
        enabled=layout.decode_enabled(node[0]),
        alive=NodeAlive.decode(alive_raw[0]) if alive_raw else None,
        containers=views,
        containers_version=containers[1].version if containers else None,
        reserved=Reservation.decode(containers[0]) if containers else Reservation(),
    )


async def _read_container(
    zk: ZooKeeper, ip: str, cid: uuid.UUID, with_status: bool
) -> ContainerView | None:
    got = await zk.get_or_none(layout.container_path(ip, cid))
    if got is None:
        return None
    try:
        record: ContainerRecord | None = ContainerRecord.decode(got[0])
    except ValueError:
        record = None
    status = None
    if with_status:
        raw = await zk.get_or_none(layout.status_path(ip, cid))
        status = layout.decode_status(raw[0]) if raw else None
    return ContainerView(ip, cid, record, status)


async def read_nodes(
    zk: ZooKeeper, with_status: bool = False, with_containers: bool = True
) -> dict[str, NodeView]:
    names = await zk.children(layout.NODES)
    ips = [ip for ip in map(layout.parse_ipv4, names) if ip is not None]
    views = await asyncio.gather(*(read_node(zk, ip, with_status, with_containers) for ip in ips))
    return {v.ip: v for v in views if v is not None}


async def read_function(zk: ZooKeeper, fid: uuid.UUID) -> FunctionView:
    got, backends, retiring, owner = await asyncio.gather(
        zk.get_or_none(layout.function_path(fid)),
        zk.get_or_none(layout.backends_path(fid)),
        zk.get_or_none(layout.retiring_path(fid)),
        zk.get_or_none(layout.owner_path(fid)),
    )
    if got is None or backends is None:
        raise NotFound(f"function {fid} not found")
    definition = parse_definition(jsondoc.loads(got[0], "stored definition"), STORED_LIMITS)
    return FunctionView(
        id=fid,
        definition=definition,
        version=got[1].version,
        backends=layout.unpack_backends(backends[0]),
        backends_version=backends[1].version,
        retiring=layout.unpack_backends(retiring[0]) if retiring else (),
        retiring_version=retiring[1].version if retiring else None,
        owner=layout.decode_owner(owner[0]) if owner else None,
    )


async def read_function_or_none(zk: ZooKeeper, fid: uuid.UUID) -> FunctionView | None:
    try:
        return await read_function(zk, fid)
    except NotFound:
        return None


async def function_ids(zk: ZooKeeper) -> list[uuid.UUID]:
    names = await zk.children(layout.FUNCTIONS)
    return sorted(fid for fid in map(layout.parse_uuid, names) if fid is not None)


async def read_functions(zk: ZooKeeper) -> list[FunctionView]:
    views = await asyncio.gather(*(read_function_or_none(zk, f) for f in await function_ids(zk)))
    return [v for v in views if v is not None]


async def read_statuses(
    zk: ZooKeeper, backends: Iterable[Backend]
) -> dict[Backend, ContainerStatus | None]:
    """Status of each backend; ``None`` where the agent has written none yet."""
    items = list(backends)
    raws = await asyncio.gather(
        *(zk.get_or_none(layout.status_path(b.ip, b.container_id)) for b in items)
    )
    return {
        b: (layout.decode_status(r[0]) if r else None) for b, r in zip(items, raws, strict=True)
    }


async def read_status_times(zk: ZooKeeper, backends: Iterable[Backend]) -> dict[Backend, float]:
    """When each backend's status was last written (seconds since the epoch); absent if none."""
    items = list(backends)
    raws = await asyncio.gather(
        *(zk.get_or_none(layout.status_path(b.ip, b.container_id)) for b in items)
    )
    return {b: r[1].mtime / 1000 for b, r in zip(items, raws, strict=True) if r is not None}


def status_label(status: ContainerStatus | None) -> str:
    return status.label if status is not None else PENDING


async def read_routes(zk: ZooKeeper) -> dict[str, uuid.UUID | None]:
    names = await zk.children(layout.ROUTES)
    raws = await asyncio.gather(*(zk.get_or_none(layout.route_path(n)) for n in names))
    return {n: (layout.decode_route(r[0]) if r else None) for n, r in zip(names, raws, strict=True)}
