"""The control plane's fleet cache against a real ZooKeeper: placements made concurrently
(their multi-ops in flight together, no lock) never over-commit a node, a multi-op that
fails leaves the cache to read its nodes again rather than count what it never reserved,
and another session's changes reach it by its watch while its own are not read back."""

from __future__ import annotations

import asyncio

import pytest

from bismuth_core import cluster, layout, operations
from bismuth_core.errors import Conflict, InsufficientCapacity
from bismuth_core.fleet import FleetCache
from bismuth_core.layout import NodeAlive
from bismuth_core.zk import ZooKeeper
from tests.integration.test_operations import definition
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NODES = ("127.0.90.1", "127.0.90.2", "127.0.90.3")


@pytest.fixture
async def fleet(zk: ZooKeeper) -> FleetCache:
    """Three live nodes with room for two containers of cpu 0.5 each."""
    for ip in NODES:
        await operations.provision(zk, ip)
        await zk.create(layout.alive_path(ip), NodeAlive(1.0, 1 << 30).encode(), ephemeral=True)
    cache = FleetCache(zk)
    await cache.start()
    return cache


async def reservations_match(zk: ZooKeeper) -> dict[str, int]:
    """Each node's reserved count, checked against its container znodes and capacity."""
    counts = {}
    for ip in NODES:
        node = await cluster.read_node(zk, ip)
        assert node is not None
        assert node.reserved.containers == len(node.containers), ip
        assert node.reserved.cpu <= 1.0, ip
        counts[ip] = len(node.containers)
    return counts


async def test_concurrent_placements_fill_exactly_the_capacity(zk, fleet):
    results = await asyncio.gather(
        *(
            operations.create_function(zk, definition(hosts=(f"c{i}.test",)), fleet)
            for i in range(8)
        ),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 6
    assert len(refused) == 2 and all(isinstance(r, InsufficientCapacity) for r in refused)
    assert await reservations_match(zk) == dict.fromkeys(NODES, 2)


async def test_a_failed_multi_op_reserves_nothing(zk, fleet):
    # Both pass the hostname check before either commits: one multi-op fails on the route.
    outcomes = await asyncio.gather(
        *(operations.create_function(zk, definition(hosts=("same.test",)), fleet) for _ in "ab"),
        *(operations.create_function(zk, definition(hosts=(f"f{i}.test",)), fleet) for i in "xy"),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Conflict) for o in outcomes) == 1
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 3
    cached = await fleet.nodes()
    assert sum(v.reserved.containers for v in cached.values()) == 3
    # the failed one's room is offered again: three more fit, a fourth does not
    for i in range(3):
        await operations.create_function(zk, definition(hosts=(f"g{i}.test",)), fleet)
    with pytest.raises(InsufficientCapacity):
        await operations.create_function(zk, definition(hosts=("h.test",)), fleet)
    assert await reservations_match(zk) == dict.fromkeys(NODES, 2)


def reservation_reads(zk: ZooKeeper) -> list[str]:
    """Record every reservation znode the session reads from now on (kazoo's get_async
    wrapped: the cache's reads of a reported change go through it)."""
    reads: list[str] = []
    client = zk.client
    real = client.get_async

    def get_async(path: str, *args: object, **kwargs: object) -> object:
        if any(path == layout.containers_path(ip) for ip in NODES):
            reads.append(path)
        return real(path, *args, **kwargs)

    client.get_async = get_async  # type: ignore[method-assign]
    return reads


async def test_the_cache_hears_another_process_free_room_and_skips_its_own_echoes(zk, fleet):
    reads = reservation_reads(zk)
    fids = [
        await operations.create_function(zk, definition(hosts=(f"e{i}.test",)), fleet)
        for i in range(6)
    ]
    await zk.get("/")  # answered after the watch events of every write before it
    assert reads == []  # its own six placements: counted when sent, not read back
    with pytest.raises(InsufficientCapacity):
        await operations.create_function(zk, definition(hosts=("full.test",)), fleet)

    other = ZooKeeper(zk.hosts, zk.env, access=zk.access)  # another API replica, say
    await other.start()
    try:
        for fid in fids[:2]:
            await operations.delete_function(other, fid)
    finally:
        await other.stop()

    async def freed() -> bool:
        cached = await fleet.nodes()
        return sum(v.reserved.containers for v in cached.values()) == 4

    await eventually(freed, what="the cache to see the room another session freed")
    assert reads  # those changes were not its own: read
    for i in range(2):
        await operations.create_function(zk, definition(hosts=(f"again{i}.test",)), fleet)
    with pytest.raises(InsufficientCapacity):
        await operations.create_function(zk, definition(hosts=("full-again.test",)), fleet)
    assert await reservations_match(zk) == dict.fromkeys(NODES, 2)
