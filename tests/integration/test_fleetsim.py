"""The fleet simulator at small N: simulated nodes (several worker processes) against a real
ZooKeeper, bismuth-api and frontend act as agents do — containers reach Running and are
served, a container fails on request, a lost node's containers run elsewhere."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bismuth_core import cluster, layout
from bismuth_core.layout import NodeAlive
from bismuth_core.zk import ZooKeeper
from bismuth_lab.fleetsim import Fleet, sim_ips
from bismuth_lab.simnode import SIM_VERSION
from tests.support.apiserver import Api, definition
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NODES = 5


@pytest.fixture
async def fleet(zk_server, zk_env, cluster_key_file, zk) -> AsyncIterator[Fleet]:
    """Five simulated nodes in two worker processes (three nodes per process at most)."""
    sim = Fleet(zk_server.hosts, zk_env, cluster_key_file, per_worker=3, session_timeout=4.0)
    try:
        await sim.add(sim_ips(NODES))
        yield sim
    finally:
        await sim.close()


async def create(http: aiohttp.ClientSession, api: Api, host: str, replicas: int) -> str:
    body = definition(max_instances=replicas, cpu=0.1, routes=[{"hostname": host}])
    async with http.post(api.url + "/function", data=json.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"])


async def backends(http: aiohttp.ClientSession, api: Api, fid: str) -> list[dict[str, Any]]:
    async with http.get(f"{api.url}/function/{fid}") as resp:
        assert resp.status == 200
        return list((await resp.json())["backends"])


async def all_running(http: aiohttp.ClientSession, api: Api, fids: list[str]) -> bool:
    for fid in fids:
        found = await backends(http, api, fid)
        if not found or any(b["status"] != "Running" for b in found):
            return False
    return True


async def test_nodes_announce_like_agents(fleet, zk: ZooKeeper):
    assert len(fleet.pids) == 2
    for ip in sim_ips(NODES):
        got = await zk.get_or_none(layout.alive_path(ip))
        assert got is not None, ip
        alive = NodeAlive.decode(got[0])
        assert alive.version == SIM_VERSION and alive.cpus > 0 and alive.memory > 0
        assert layout.decode_enabled((await zk.get(layout.node_path(ip)))[0])


async def test_containers_run_and_are_served(fleet, api, http, start_frontend):
    fids = [await create(http, api, f"sim{i}.test", replicas=2) for i in range(4)]
    await eventually(lambda: all_running(http, api, fids), timeout=20, what="all Running")
    for fid in fids:
        ips = [b["backend"]["ip"] for b in await backends(http, api, fid)]
        assert len(set(ips)) == 2 and set(ips) <= set(sim_ips(NODES))
    stats = await fleet.stats()
    assert (stats.nodes, stats.containers, stats.running) == (NODES, 8, 8)

    fe = await start_frontend()
    async with aiohttp.ClientSession() as client:

        async def served(host: str) -> bool:
            async with client.get(fe.url + "/", headers={"Host": host}) as resp:
                return resp.status == 200 and await resp.text() == "ok"

        for i in range(4):
            await eventually(lambda i=i: served(f"sim{i}.test"), timeout=15, what="served")
        async with client.get(fe.url + "/", headers={"Host": "unknown.test"}) as resp:
            assert resp.status == 404


async def test_a_container_fails_on_request(fleet, api, http):
    fid = await create(http, api, "fails.test", replicas=1)
    await eventually(lambda: all_running(http, api, [fid]), timeout=20, what="Running")
    (found,) = await backends(http, api, fid)
    backend = layout.Backend(
        found["backend"]["ip"], layout.parse_uuid(found["backend"]["container_id"])
    )
    assert await fleet.fail([backend]) == 1
    (after,) = await backends(http, api, fid)
    assert after["status"] == "Failed"


async def test_new_containers_follow_the_nodes_behaviour(fleet, api, http):
    await fleet.behave(outcome="failed")
    fid = await create(http, api, "broken.test", replicas=2)

    async def failed() -> bool:
        found = await backends(http, api, fid)
        return len(found) == 2 and all(b["status"] == "Failed" for b in found)

    await eventually(failed, timeout=20, what="both Failed")
    assert (await fleet.stats()).failed == 2


async def test_idle_nodes_take_containers_without_starting_them(fleet, api, http):
    await fleet.behave(idle=True)
    idle = await create(http, api, "idle.test", replicas=2)

    async def seen() -> bool:
        return (await fleet.stats()).containers == 2

    await eventually(seen, timeout=20, what="both containers seen by their nodes")
    await fleet.behave()
    busy = await create(http, api, "busy.test", replicas=2)
    await eventually(lambda: all_running(http, api, [busy]), timeout=20, what="Running")
    assert [b["status"] for b in await backends(http, api, idle)] == ["Pending"] * 2
    assert (await fleet.stats()).running == 2


async def test_lost_nodes_containers_run_elsewhere(fleet, api, http, zk: ZooKeeper):
    fids = [await create(http, api, f"move{i}.test", replicas=2) for i in range(4)]
    await eventually(lambda: all_running(http, api, fids), timeout=20, what="all Running")
    held: dict[str, int] = {}
    for fid in fids:
        for b in await backends(http, api, fid):
            held[b["backend"]["ip"]] = held.get(b["backend"]["ip"], 0) + 1
    lost = sorted(held, key=lambda ip: -held[ip])[:2]  # two at once
    await fleet.stop(lost)
    for ip in lost:
        assert await zk.exists(layout.alive_path(ip)) is None  # the session closed
        assert ip not in fleet.nodes

    async def moved() -> bool:
        if not await all_running(http, api, fids):
            return False
        placed = [[b["backend"]["ip"] for b in await backends(http, api, fid)] for fid in fids]
        return all(len(ips) == 2 and not set(ips) & set(lost) for ips in placed)

    await eventually(moved, timeout=api.config.node_loss_grace + 20, what="rescheduled")
    assert (await fleet.stats()).running == 8
    for ip in lost:
        assert await zk.children(layout.containers_path(ip)) == []
    for ip in fleet.nodes:  # what each node reserves is what it holds
        node = await cluster.read_node(zk, ip)
        assert node is not None and node.reserved.containers == len(node.containers)
