"""Cluster operations against a real ZooKeeper: placement, rollouts, drains, lost nodes."""

from __future__ import annotations

import pytest

from bismuth_core import cluster, consistency, layout, operations
from bismuth_core.definition import parse_definition
from bismuth_core.errors import Conflict, InsufficientCapacity
from bismuth_core.layout import ContainerStatus
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def definition(max_instances: int = 1, hosts: tuple[str, ...] = ("app.test",), cpu: float = 0.5):
    return parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": cpu,
            "memory": 64 << 20,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
            "max_instances": max_instances,
            "routes": [{"hostname": h} for h in hosts],
        }
    )


async def statuses(zk, fid):
    view = await cluster.read_function(zk, fid)
    got = await cluster.read_statuses(zk, view.backends)
    return [got[b] for b in view.backends]


async def all_running(zk, fid) -> bool:
    return set(await statuses(zk, fid)) == {ContainerStatus.RUNNING}


async def test_create_spreads_replicas_and_writes_routes(zk, standins):
    for _ in range(3):
        await standins.add()
    fid = await operations.create_function(zk, definition(max_instances=3))
    view = await cluster.read_function(zk, fid)
    assert sorted(b.ip for b in view.backends) == sorted(a.ip for a in standins.agents)
    assert layout.decode_route((await zk.get(layout.route_path("app.test")))[0]) == fid
    await eventually(
        lambda: all_running(zk, fid),
        what="all Running",
    )
    assert set(await statuses(zk, fid)) == {ContainerStatus.RUNNING}


async def test_hostname_taken_is_conflict_and_writes_nothing(zk, standins):
    await standins.add()
    await operations.create_function(zk, definition())
    before = await cluster.function_ids(zk)
    with pytest.raises(Conflict, match=r"app\.test"):
        await operations.create_function(zk, definition())
    assert await cluster.function_ids(zk) == before


async def test_no_capacity_names_the_shortfall(zk, standins):
    await standins.add(cpus=1.0)
    with pytest.raises(InsufficientCapacity, match="cannot place 1 of 3"):
        await operations.create_function(zk, definition(max_instances=3, cpu=0.5))
    assert await cluster.function_ids(zk) == []
    node = (await cluster.read_nodes(zk))[standins.agents[0].ip]
    assert node.containers == {}


async def test_update_retires_old_containers_once_new_run(zk, standins):
    agent = await standins.add()
    fid = await operations.create_function(zk, definition())
    (old,) = (await cluster.read_function(zk, fid)).backends
    await eventually(lambda: all_running(zk, fid), what="Running")
    agent.status = None  # new containers stay without status for now
    view = await operations.update_function(zk, fid, None)
    assert old in view.retiring and len(view.backends) == 2
    assert not await operations.finish_rollout(zk, fid)
    (new,) = view.active
    await agent.set_status(new.container_id, ContainerStatus.RUNNING)
    assert await operations.finish_rollout(zk, fid)
    view = await cluster.read_function(zk, fid)
    assert view.backends == (new,) and view.retiring == ()
    assert await zk.exists(layout.container_path(old.ip, old.container_id)) is None


async def test_drain_moves_containers_and_lost_node_is_replaced(zk, standins):
    a = await standins.add()
    b = await standins.add()
    fid = await operations.create_function(zk, definition(max_instances=1))
    (first,) = (await cluster.read_function(zk, fid)).backends
    src = a if first.ip == a.ip else b
    dst = b if src is a else a
    moved, problems = await operations.drain(zk, src.ip)
    assert problems == [] and [m.ip for m in moved] == [dst.ip]
    await eventually(lambda: operations.finish_rollout(zk, fid), what="rollout done")
    assert (await cluster.read_function(zk, fid)).backends == tuple(moved)
    await operations.set_enabled(zk, src.ip, True)
    await dst.stop()
    (current,) = (await cluster.read_function(zk, fid)).backends
    replacement = await operations.move_container(zk, current, lost=True)
    assert replacement is not None and replacement.ip == src.ip
    assert (await cluster.read_function(zk, fid)).backends == (replacement,)


async def test_delete_removes_everything(zk, standins):
    await standins.add()
    fid = await operations.create_function(zk, definition(max_instances=1))
    await eventually(lambda: all_running(zk, fid), what="Running")
    await operations.delete_function(zk, fid)
    assert await zk.children(layout.FUNCTIONS) == []
    assert await zk.children(layout.ROUTES) == []
    assert await zk.children(layout.containers_path(standins.agents[0].ip)) == []


async def test_node_reservations_follow_every_operation(zk, standins):
    a = await standins.add()
    b = await standins.add()

    async def reserved() -> dict[str, tuple[float, int, int]]:
        nodes = await cluster.read_nodes(zk, with_containers=False)
        return {
            ip: (n.reserved.cpu, n.reserved.memory, n.reserved.containers)
            for ip, n in nodes.items()
        }

    fid = await operations.create_function(zk, definition(max_instances=2))
    assert await reserved() == {a.ip: (0.5, 64 << 20, 1), b.ip: (0.5, 64 << 20, 1)}
    await eventually(lambda: all_running(zk, fid), what="Running")
    await operations.update_function(zk, fid, definition(max_instances=1, cpu=1.0))
    total = sorted((await reserved()).values())
    assert sum(r[2] for r in total) == 3 and sum(r[0] for r in total) == 2.0
    await eventually(lambda: operations.finish_rollout(zk, fid), what="rollout finished")
    assert sorted((await reserved()).values()) == [(0.0, 0, 0), (1.0, 64 << 20, 1)]
    (current,) = (await cluster.read_function(zk, fid)).backends
    await operations.move_container(zk, current, lost=True)
    assert sorted((await reserved()).values()) == [(0.0, 0, 0), (1.0, 64 << 20, 1)]
    assert await consistency.check(zk) == []
    await operations.delete_function(zk, fid)
    assert set((await reserved()).values()) == {(0.0, 0, 0)}
    assert await consistency.check(zk) == []
