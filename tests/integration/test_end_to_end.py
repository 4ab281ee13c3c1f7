"""The control plane and the frontend together, as an operator and a client use them.

Functions are created and updated through bismuth-api's HTTP API (its leader finishing
rollouts and replacing lost nodes' containers); clients call them through the frontend
(nginx and its controller) by Host; stand-in agents play the nodes.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace

import aiohttp
import pytest

from bismuth_core import cluster, layout, operations, tenancy
from bismuth_core.definition import parse_definition
from bismuth_core.errors import AccessDenied
from bismuth_core.zk import ZooKeeper
from tests.conftest import StandIns
from tests.support.apiserver import Api, definition
from tests.support.frontend import FrontendUnderTest
from tests.support.waiting import eventually
from tests.support.zkfaults import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def frontend_agent_port(standins) -> int:
    return standins.port


@pytest.fixture
async def frontend(start_frontend) -> FrontendUnderTest:
    return await start_frontend()


async def api_call(http, api, method, path, body=None):
    data = json.dumps(body) if body is not None else None
    async with http.request(method, api.url + path, data=data) as resp:
        return resp.status, await resp.json()


async def invoke(http, fe, host="app.example", path="/"):
    async with http.get(fe.url + path, headers={"Host": host}) as resp:
        text = await resp.text()
        return resp.status, resp.headers.get("X-Bismuth-Container-ID"), text


async def served(http, fe, host="app.example"):
    status, _, _ = await invoke(http, fe, host)
    return status == 200


async def all_running(http, api, fid, count):
    status, body = await api_call(http, api, "GET", f"/function/{fid}")
    states = [b["status"] for b in body["backends"]]
    return body if status == 200 and states == ["Running"] * count else None


class RequestLoop:
    """Clients calling the frontend back to back until stopped; counts every outcome."""

    def __init__(self, http, fe, host="app.example", workers=4) -> None:
        self.http, self.fe, self.host = http, fe, host
        self.outcomes: Counter[int] = Counter()
        self.served_by: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(workers)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            status, cid, _ = await invoke(self.http, self.fe, self.host)
            self.outcomes[status] += 1
            if cid:
                self.served_by[cid] += 1

    async def stop(self) -> Counter[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes


async def test_create_then_call_through_the_frontend(api, frontend, standins, http):
    await standins.add()
    status, body = await api_call(http, api, "POST", "/function", definition())
    assert status == 200
    fid = body["id"]
    got = await eventually(lambda: all_running(http, api, fid, 1), what="Running")
    cid = got["backends"][0]["backend"]["container_id"]

    async def served():
        status, served_by, text = await invoke(http, frontend, path="/hello?x=1")
        return (status, served_by, json.loads(text)["path"]) if status == 200 else None

    assert await eventually(served, what="served") == (200, cid, "/hello")
    status, _, text = await invoke(http, frontend, host="nobody.example")
    assert status == 404 and "nobody.example" in json.loads(text)["error"]
    assert (await api_call(http, api, "DELETE", f"/function/{fid}"))[0] == 200

    async def gone():
        status, _, _ = await invoke(http, frontend)
        return status == 404

    await eventually(gone, what="route removed")


async def test_put_under_load_drops_no_request(api, frontend, standins, http):
    for _ in range(2):
        await standins.add(start_delay=0.3)  # new containers take a moment to start
    _, body = await api_call(http, api, "POST", "/function", definition(max_instances=2))
    fid = body["id"]
    first = await eventually(lambda: all_running(http, api, fid, 2), what="Running")
    old = {b["backend"]["container_id"] for b in first["backends"]}
    await eventually(lambda: served(http, frontend), what="served")

    loop = RequestLoop(http, frontend)
    await eventually(lambda: sum(loop.outcomes.values()) > 20, what="traffic flowing")
    status, body = await api_call(
        http, api, "PUT", f"/function/{fid}", definition(max_instances=2, cpu=1.0)
    )
    assert status == 200
    new = {b["backend"]["container_id"] for b in body["backends"]} - old
    assert len(new) == 2
    done = await eventually(lambda: all_running(http, api, fid, 2), what="rollout finished")
    assert {b["backend"]["container_id"] for b in done["backends"]} == new
    await eventually(lambda: loop.served_by.keys() & new, what="traffic on new containers")
    before_end = dict(loop.served_by)
    await eventually(
        lambda: sum(loop.served_by[c] for c in new) > sum(before_end.get(c, 0) for c in new) + 20,
        what="more traffic on the new containers",
    )
    outcomes = await loop.stop()
    assert set(outcomes) == {200}, outcomes
    assert sum(outcomes.values()) > 40


async def test_lost_node_moves_traffic_to_the_other_node(api, frontend, standins, http):
    a = await standins.add()
    b = await standins.add()
    _, body = await api_call(http, api, "POST", "/function", definition(max_instances=1))
    fid = body["id"]
    placed = await eventually(lambda: all_running(http, api, fid, 1), what="Running")
    victim = a if placed["backends"][0]["backend"]["ip"] == a.ip else b
    survivor = b if victim is a else a
    await eventually(lambda: served(http, frontend), what="served")
    loop = asyncio.get_running_loop()
    lost_at = loop.time()
    await victim.stop()

    async def served_by_survivor():
        status, _cid, text = await invoke(http, frontend)
        return status == 200 and json.loads(text)["node"] == survivor.ip

    await eventually(
        served_by_survivor,
        timeout=api.config.node_loss_grace + 8,
        what="served from the surviving node",
    )
    # within the grace period plus a few seconds, and not before the node was gone
    assert loop.time() - lost_at <= api.config.node_loss_grace + 8


async def test_zookeeper_outage_frontend_serves_api_refuses(
    zk_server, zk_env, api_config, standins, start_frontend, http
):
    await standins.add()
    proxy = TcpProxy(zk_server.port)
    api = Api(replace(api_config, zookeeper=proxy.hosts))
    await api.start()
    fe = await start_frontend(zookeeper=proxy.hosts)
    try:
        _, body = await api_call(http, api, "POST", "/function", definition())
        await eventually(lambda: all_running(http, api, body["id"], 1), what="Running")
        await eventually(lambda: served(http, fe), what="served")
        proxy.cut()

        async def api_refuses():
            status, answer = await api_call(http, api, "GET", "/function")
            return status == 503 and "ZooKeeper" in answer["error"]

        await eventually(api_refuses, what="API answers 503 while ZooKeeper is away")
        for _ in range(20):
            status, _, _ = await invoke(http, fe)
            assert status == 200
        proxy.restore()
        await eventually(lambda: all_running(http, api, body["id"], 1), timeout=15, what="API back")
    finally:
        await api.stop()
        proxy.close()


async def test_no_running_backend_is_503(api, frontend, standins, http):
    await standins.add(status=None)  # the agent never reports the container running
    _, body = await api_call(http, api, "POST", "/function", definition())
    assert body["id"]

    async def unavailable():
        status, _, text = await invoke(http, frontend)
        return status == 503 and "error" in json.loads(text)

    await eventually(unavailable, what="503 with no running backend")


async def test_a_cluster_from_before_tenants_and_acls_upgrades_in_place(
    zk_server, zk_env, api_config, start_frontend
):
    # The tree as a release without tenants and ACLs left it: written by anonymous sessions,
    # world-readable and -writable, without tenancy roots, its functions unowned.
    env = zk_env + "old"
    old = ZooKeeper(zk_server.hosts, env)
    await old.start()
    await operations.bootstrap(old)
    for root in layout.TENANCY_ROOTS:
        await old.delete(root)
    nodes = StandIns(zk_server.hosts, env, old)
    await nodes.add(access=None)  # an agent of that release: anonymous too
    hosts = ("one.example", "two.example")
    fids = {
        h: await operations.create_function(
            old, parse_definition(definition(routes=[{"hostname": h}]))
        )
        for h in hosts
    }
    fe = await start_frontend(zookeeper_env=env, agent_port=nodes.port)
    api = Api(replace(api_config, zookeeper_env=env, agent_port=nodes.port))
    try:
        async with aiohttp.ClientSession() as client:
            before = {h: await eventually(lambda h=h: _served_by(client, fe, h)) for h in hosts}
            backends = {h: (await cluster.read_function(old, f)).backends for h, f in fids.items()}

            await api.start()  # as bismuth-api starts: bootstrap (ACLs), adopt the unowned
            with pytest.raises(AccessDenied):  # what the old sessions could do, they cannot
                await old.get(layout.function_path(fids[hosts[0]]))
            default = await tenancy.find_tenant(api.zk, "default")
            assert await tenancy.tenant_function_ids(api.zk, default.id) == sorted(fids.values())
            _, token = await tenancy.issue_token(api.zk, default.id)
            headers = {"Authorization": f"Bearer {token.text}"}
            async with client.get(f"{api.url}/function", headers=headers) as resp:
                listed = await resp.json()
            assert {f["id"] for f in listed} == {str(f) for f in fids.values()}
            assert {f["tenant"] for f in listed} == {str(default.id)}
            for h, fid in fids.items():  # nothing recreated: same containers, serving
                assert (await cluster.read_function(api.zk, fid)).backends == backends[h]
                assert await _served_by(client, fe, h) == before[h]
            assert await api.zk.children(layout.ROLLOUTS) == []
    finally:
        await api.stop()
        await nodes.close()
        await old.stop()


async def _served_by(client, fe, host):
    status, cid, _ = await invoke(client, fe, host)
    return cid if status == 200 else None
