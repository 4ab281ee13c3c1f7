"""Reservation ops are guarded by the versions a placement was decided on, even when the views
they are given are a live cache that changes while one of them waits for a read."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from bismuth_core import layout
from bismuth_core.cluster import NodeView
from bismuth_core.layout import NodeAlive, Reservation
from bismuth_core.operations.placement import reservation_ops


class ReadChangesTheCache:
    """Stands in for ZooKeeper's read of a node the views lack; while that read is on its
    way, another placement moves a known node's reservation on (as the cache does)."""

    def __init__(self, views: dict[str, NodeView]) -> None:
        self.views = views

    async def get_or_none(self, path: str) -> tuple[bytes, object] | None:
        await asyncio.sleep(0)
        self.views["10.0.0.2"] = view("10.0.0.2", containers=5, version=8)
        return None  # the unknown node has no reservation yet


def view(ip: str, containers: int, version: int) -> NodeView:
    return NodeView(
        ip=ip,
        enabled=True,
        alive=NodeAlive(4, 8 << 30),
        containers_version=version,
        reserved=Reservation(0.1 * containers, containers << 20, containers),
    )


def test_ops_use_the_views_as_they_were_when_asked_not_after_a_read() -> None:
    views = {"10.0.0.2": view("10.0.0.2", containers=4, version=7)}
    deltas = {"10.0.0.1": (0.1, 1 << 20, 1), "10.0.0.2": (0.1, 1 << 20, 1)}
    zk = ReadChangesTheCache(views)

    ops = asyncio.run(reservation_ops(zk, deltas, MappingProxyType(views)))  # type: ignore[arg-type]

    assert [(op.path, op.kind) for op in ops] == [
        (layout.containers_path("10.0.0.1"), "create"),  # unknown, read: none yet
        (layout.containers_path("10.0.0.2"), "set"),
    ]
    # the version the placement saw: had the cache's later one been used, a placement
    # decided on stale room would pass its guard
    assert ops[1].version == 7
    assert Reservation.decode(ops[1].data).containers == 5
