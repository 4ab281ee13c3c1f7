"""Containers and node capacity: placing containers, the ops that create and remove them,
and the reservations on their nodes that each multi-op rewrites under a version guard.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import layout
from ..cluster import (
    FunctionView,
    NodeView,
)
from ..definition import FunctionDefinition
from ..errors import InsufficientCapacity
from ..fleet import NodeSource
from ..layout import Backend, ContainerRecord, Reservation
from ..scheduler import place, place_in_order
from ..zk import (
    Op,
    ZooKeeper,
    create,
    delete,
    set_data,
)

log = logging.getLogger(__name__)

Deltas = dict[str, tuple[float, int, int]]  # per node: cpu, memory, container count


def container_ops(
    backends: Iterable[Backend], fid: uuid.UUID, definition: FunctionDefinition
) -> list[Op]:
    record = ContainerRecord(fid, definition.cpu, definition.memory).encode()
    return [create(layout.container_path(b.ip, b.container_id), record) for b in backends]


def add_delta(deltas: Deltas, ip: str, cpu: float, memory: int, count: int) -> None:
    c, m, n = deltas.get(ip, (0.0, 0, 0))
    deltas[ip] = (c + cpu, m + memory, n + count)


def placement_deltas(ips: Iterable[str], definition: FunctionDefinition) -> Deltas:
    deltas: Deltas = {}
    for ip in ips:
        add_delta(deltas, ip, definition.cpu, definition.memory, 1)
    return deltas


async def reservation_ops(
    zk: ZooKeeper, deltas: Deltas, known: Mapping[str, NodeView] | None = None
) -> list[Op]:
    """Rewrite each changed node's reservation, guarded by the version it was read at.

    For nodes in ``known`` (the snapshot a placement was decided on) that snapshot's
    version is used, so a concurrent placement on the same node makes the multi-op fail.
    """
    # every known view now, before a read below awaits: ``known`` may be a live cache
    views = {ip: (known or {}).get(ip) for ip in sorted(deltas)}
    ops: list[Op] = []
    for ip, view in views.items():
        if view is not None:
            current, version = view.reserved, view.containers_version
        else:
            got = await zk.get_or_none(layout.containers_path(ip))
            current = Reservation.decode(got[0]) if got else Reservation()
            version = got[1].version if got else None
        data = current.plus(*deltas[ip]).encode()
        path = layout.containers_path(ip)
        ops.append(create(path, data) if version is None else set_data(path, data, version))
    return ops


async def removal_ops(zk: ZooKeeper, backends: Iterable[Backend]) -> tuple[list[Op], Deltas]:
    """Delete container znodes (status first); absent ones need nothing.

    Returns the ops and the reservations they free, per node.
    """
    items = sorted(set(backends))
    found = await asyncio.gather(
        *(zk.get_or_none(layout.container_path(b.ip, b.container_id)) for b in items),
        *(zk.exists(layout.status_path(b.ip, b.container_id)) for b in items),
    )
    ops: list[Op] = []
    deltas: Deltas = {}
    for i, b in enumerate(items):
        if found[len(items) + i] is not None:
            ops.append(delete(layout.status_path(b.ip, b.container_id)))
        got = found[i]
        if got is not None:
            ops.append(delete(layout.container_path(b.ip, b.container_id)))
            try:
                record = ContainerRecord.decode(got[0])
                add_delta(deltas, b.ip, -record.cpu, -record.memory, -1)
            except ValueError:
                add_delta(deltas, b.ip, 0.0, 0, -1)
    return ops, deltas


async def remove_containers_ops(zk: ZooKeeper, backends: Iterable[Backend]) -> list[Op]:
    """Ops deleting these containers and releasing what they reserved on their nodes."""
    ops, deltas = await removal_ops(zk, backends)
    return [*ops, *await reservation_ops(zk, deltas)]


def retiring_op(view: FunctionView, retiring: Sequence[Backend]) -> list[Op]:
    path = layout.retiring_path(view.id)
    if view.retiring_version is None:
        return [create(path, layout.pack_backends(retiring))] if retiring else []
    if not retiring:
        return [delete(path, view.retiring_version)]
    return [set_data(path, layout.pack_backends(retiring), view.retiring_version)]


async def place_on(
    source: NodeSource,
    count: int,
    cpu: float,
    memory: int,
    **constraints: Any,
) -> tuple[Mapping[str, NodeView], list[str]]:
    """Nodes as the source has them and a placement on them.

    Cached nodes are used first (a source that caches reads again the nodes of a multi-op
    that failed); if those cannot fit the request, the answer is confirmed from fresh reads
    before the shortfall is reported.
    """
    nodes = await source.nodes()  # after a lost race, a cache reads the nodes it lost on
    ranked = source.ranked()
    if ranked is not None:
        in_order = (nodes[ip].capacity() for _, ip in ranked if ip in nodes)
        chosen = place_in_order(in_order, count, cpu, memory, **constraints)
        if chosen is not None:
            return nodes, chosen
    try:
        return nodes, place(
            (n.capacity() for n in nodes.values()), count, cpu, memory, **constraints
        )
    except InsufficientCapacity:
        pass
    nodes = await source.nodes(fresh=True)
    return nodes, place((n.capacity() for n in nodes.values()), count, cpu, memory, **constraints)


async def commit_placement(source: NodeSource, ops: Sequence[Op]) -> None:
    """Commit ``ops``, which place containers: the source counts their reservations from
    the moment they are sent, so placements decided meanwhile build on them instead of
    waiting for this answer (a failure makes the source read those nodes again), and
    commits them (a cache sends placements made close together as one multi-op).

    Callers read everything they need before :func:`place_on` and build ``ops`` from its
    nodes without awaiting any I/O in between: another placement that ran meanwhile would
    have moved the reservations' versions past the ones ``ops`` are guarded by.
    """
    source.reserve(ops)
    try:
        results = await source.commit(ops)
    except BaseException:
        source.rejected(ops)
        raise
    source.committed(ops, results)


def new_backends(ips: Iterable[str]) -> list[Backend]:
    return [Backend(ip, uuid.uuid4()) for ip in ips]


def union(*groups: Iterable[Backend]) -> list[Backend]:
    seen: dict[Backend, None] = {}
    for group in groups:
        for b in group:
            seen.setdefault(b)
    return list(seen)
