"""bismuth-api over HTTP against a real ZooKeeper and stand-in agents."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import pytest

from bismuth_core import cluster
from bismuth_core.layout import ContainerStatus
from tests.support.apiserver import Api, definition
from tests.support.waiting import eventually
from tests.support.zkfaults import TcpProxy, expire_session

pytestmark = pytest.mark.integration


async def call(http, method, url, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    async with http.request(method, url, data=data) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def running(http, api, fid, count=1):
    status, body = await call(http, "GET", f"{api.url}/function/{fid}")
    assert status == 200
    states = [b["status"] for b in body["backends"]]
    return body if states == ["Running"] * count else None


async def test_create_get_list_delete(api, standins, http):
    await standins.add()
    status, body = await call(http, "POST", f"{api.url}/function", definition())
    assert status == 200
    fid = body["id"]
    got = await eventually(lambda: running(http, api, fid), what="Running")
    assert got["definition"] == definition()
    assert got["backends"][0]["backend"]["ip"] == standins.agents[0].ip
    status, listed = await call(http, "GET", f"{api.url}/function")
    assert status == 200 and [f["id"] for f in listed] == [fid]
    status, body = await call(http, "DELETE", f"{api.url}/function/{fid}")
    assert status == 200
    status, body = await call(http, "GET", f"{api.url}/function/{fid}")
    assert status == 404 and fid in body["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (definition(image="Not A Ref"), "image"),
        (definition(cpu=0), "cpu"),
        (definition(cpu=5.0), "cpu"),  # the only node has 4 cpus
        (definition(memory=1024), "memory"),
        (definition(max_instances=0), "max_instances"),
        (definition(routes=[{"hostname": "-bad-.example"}]), "routes"),
        (definition(routes=[{"hostname": "a.example"}, {"hostname": "A.example."}]), "routes"),
        (definition(repo=["ftp://example/repo.git", "main"]), "repo"),
        (definition(repo=["/srv/git/app.git", "main"]), "repo"),
        (definition(repo=["file:///srv/git/app.git", "main"]), "repo"),
        (definition(repo=["ssh://git@git.example/app.git", "main"]), "repo"),
        (definition(repo=["git@git.example:app.git", "main"]), "repo"),
        (definition(repo=["git://git.example/app.git", "main"]), "repo"),
        (definition(repo=["ext::sh -c id", "main"]), "repo"),
        (definition(repo=["http://127.0.0.1:8002/app.git", "main"]), "repo"),
        (definition(repo=["https://me:pw@git.example/app.git", "main"]), "repo"),
        (definition(routes=[{"hostname": "127.0.0.1"}]), "routes"),
        (definition(routes=[{"hostname": "localhost"}]), "routes"),
        (definition(svc_quotas={"kv": -1}), "svc_quotas.kv"),
        (definition(invoke_mode={"Daemon": []}), "invoke_mode"),
        (definition(extra=1), "extra"),
    ],
)
async def test_invalid_definitions_are_400_naming_the_field(api, standins, http, body, field):
    await standins.add(cpus=4.0)
    status, answer = await call(http, "POST", f"{api.url}/function", body)
    assert status == 400, answer
    assert answer["field"] == field and field.split(".")[0] in answer["error"]
    assert await cluster.function_ids(standins.zk) == []


async def test_malformed_requests_get_json_errors(api, standins, http):
    await standins.add()
    cases = [
        ("POST", "/function", b"{not json", 400),
        ("POST", "/function", b"", 400),
        ("POST", "/function", b"[1, 2]", 400),
        ("POST", "/function", b"\xff\xfe", 400),
        ("GET", "/function/not-a-uuid", None, 400),
        ("GET", f"/function/{uuid.uuid4()}", None, 404),
        ("PUT", f"/function/{uuid.uuid4()}", None, 404),
        ("DELETE", f"/function/{uuid.uuid4()}", None, 404),
        ("GET", "/nothing-here", None, 404),
        ("PATCH", "/function", None, 405),
        ("POST", "/function", b"x" * (2 << 20), 413),
        ("POST", "/function", b"[" * 50_000, 400),
        ("POST", "/function", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
        ("PUT", f"/function/{uuid.uuid4()}", b"[" * 70 + b"]" * 70, 400),
    ]
    for method, path, raw, expected in cases:
        status, body = await call(http, method, api.url + path, raw=raw)
        assert status == expected, (method, path, body)
        assert isinstance(body, dict) and body["error"], (method, path, body)


async def test_deeply_nested_json_is_a_400_that_says_so(api, standins, http):
    await standins.add()
    status, body = await call(http, "POST", api.url + "/function", raw=b"[" * 50_000)
    assert status == 400
    assert body == {"error": "request body is nested deeper than 64 levels"}


async def test_hostname_conflict_is_409(api, standins, http):
    await standins.add()
    status, first = await call(http, "POST", f"{api.url}/function", definition())
    assert status == 200
    status, body = await call(http, "POST", f"{api.url}/function", definition())
    assert status == 409 and "app.example" in body["error"]
    other = definition(routes=[{"hostname": "other.example"}])
    status, second = await call(http, "POST", f"{api.url}/function", other)
    assert status == 200
    status, body = await call(http, "PUT", f"{api.url}/function/{second['id']}", definition())
    assert status == 409 and first["id"] in body["error"]
    assert len(await cluster.function_ids(standins.zk)) == 2


async def test_no_capacity_is_503_naming_the_shortfall(api, standins, http):
    await standins.add(cpus=1.0)
    status, body = await call(http, "POST", f"{api.url}/function", definition(max_instances=3))
    assert status == 503
    assert "cannot place 1 of 3" in body["error"]
    assert await cluster.function_ids(standins.zk) == []


async def test_put_starts_new_containers_before_removing_old(api, standins, http):
    agent = await standins.add()
    _, body = await call(http, "POST", f"{api.url}/function", definition())
    fid = body["id"]
    first = await eventually(lambda: running(http, api, fid), what="Running")
    old = first["backends"][0]["backend"]["container_id"]
    agent.status = None  # hold the new container in Pending
    status, body = await call(http, "PUT", f"{api.url}/function/{fid}", definition(cpu=1.0))
    assert status == 200
    assert [(b["backend"]["container_id"] == old, b["retiring"]) for b in body["backends"]] == [
        (True, True),
        (False, False),
    ]
    new = body["backends"][1]["backend"]["container_id"]
    status, body = await call(http, "GET", f"{api.url}/function/{fid}")
    assert [b["status"] for b in body["backends"]] == ["Running", "Pending"]
    await agent.set_status(uuid.UUID(new), ContainerStatus.RUNNING)
    done = await eventually(lambda: running(http, api, fid), what="old container retired")
    assert done["backends"][0]["backend"]["container_id"] == new
    assert done["definition"]["cpu"] == 1.0
    status, body = await call(http, "PUT", f"{api.url}/function/{fid}", raw=b"")
    assert status == 200 and len(body["backends"]) == 2  # redeploy: same definition


async def test_a_rollout_finishes_when_its_new_container_runs_not_at_the_next_pass(
    api_config, standins, http
):
    agent = await standins.add()
    api = Api(replace(api_config, leader_interval=120.0))  # no timer pass during the test
    await api.start()
    try:
        await eventually(lambda: api.deps.leader.is_leader, what="leader elected")
        _, body = await call(http, "POST", f"{api.url}/function", definition())
        fid = body["id"]
        await eventually(lambda: running(http, api, fid), what="Running")
        agent.status = None
        passes = api.deps.leader.passes
        _, body = await call(http, "PUT", f"{api.url}/function/{fid}", raw=b"")
        new = uuid.UUID(body["backends"][1]["backend"]["container_id"])
        await eventually(lambda: api.deps.leader.passes > passes, what="a pass on the rollout")
        await agent.set_status(new, ContainerStatus.RUNNING)
        done = await eventually(lambda: running(http, api, fid), what="rollout finished")
        assert [b["backend"]["container_id"] for b in done["backends"]] == [str(new)]
    finally:
        await api.stop()


async def test_rollout_finishes_after_api_restart(api_config, standins, http):
    agent = await standins.add()
    first = Api(api_config)
    await first.start()
    _, body = await call(http, "POST", f"{first.url}/function", definition())
    fid = body["id"]
    await eventually(lambda: running(http, first, fid), what="Running")
    agent.status = None
    _, body = await call(http, "PUT", f"{first.url}/function/{fid}", raw=b"")
    new = uuid.UUID(body["backends"][1]["backend"]["container_id"])
    await first.stop()
    await agent.set_status(new, ContainerStatus.RUNNING)
    second = Api(api_config)
    await second.start()
    try:
        done = await eventually(lambda: running(http, second, fid), what="rollout finished")
        assert done["backends"][0]["backend"]["container_id"] == str(new)
    finally:
        await second.stop()


async def test_lost_node_containers_move_within_grace(api, standins, http):
    a = await standins.add()
    b = await standins.add()
    _, body = await call(http, "POST", f"{api.url}/function", definition(max_instances=1))
    fid = body["id"]
    placed = await eventually(lambda: running(http, api, fid), what="Running")
    victim = a if placed["backends"][0]["backend"]["ip"] == a.ip else b
    survivor = b if victim is a else a
    loop = asyncio.get_running_loop()
    lost_at = loop.time()
    await victim.stop()

    async def moved():
        got = await running(http, api, fid)
        return got if got and got["backends"][0]["backend"]["ip"] == survivor.ip else None

    await eventually(moved, timeout=api.config.node_loss_grace + 8, what="rescheduled")
    elapsed = loop.time() - lost_at
    assert elapsed >= api.config.node_loss_grace * 0.5  # not before the node could be gone
    node = (await cluster.read_nodes(standins.zk))[victim.ip]
    assert node.containers == {}


async def test_a_standby_counts_a_lost_nodes_grace_from_the_loss(api, api_config, standins, http):
    """A node lost before a failover is not given a new grace period by the new leader."""
    a, b = await standins.add(), await standins.add()
    _, body = await call(http, "POST", f"{api.url}/function", definition(max_instances=1))
    fid = body["id"]
    placed = await eventually(lambda: running(http, api, fid), what="Running")
    victim = a if placed["backends"][0]["backend"]["ip"] == a.ip else b
    standby = Api(replace(api_config, node_loss_grace=30.0))
    await standby.start()
    try:
        await eventually(lambda: api.deps.leader.is_leader, what="the first API leads")
        await victim.stop()
        tracker = standby.deps.leader.tracker
        await eventually(lambda: tracker.lost_since(victim.ip) is not None, what="loss seen")
        seen = tracker.lost_since(victim.ip)
        await api.stop()  # the leader goes: the standby takes over
        await eventually(lambda: standby.deps.leader.is_leader, what="the standby leads")
        assert tracker.lost_since(victim.ip) == seen  # counted from the loss, not the takeover
    finally:
        await standby.stop()


async def test_zookeeper_unreachable_gives_503_json_then_recovers(api_config, standins, http):
    await standins.add()
    proxy = TcpProxy(int(api_config.zookeeper.rsplit(":", 1)[1]))
    server = Api(replace(api_config, zookeeper=proxy.hosts))
    await server.start()
    try:
        proxy.cut()

        async def unavailable():
            status, body = await call(http, "GET", f"{server.url}/function")
            return status == 503 and "ZooKeeper" in body["error"]

        await eventually(unavailable, what="503 while ZooKeeper is away")
        status, body = await call(http, "POST", f"{server.url}/function", definition())
        assert status == 503 and "error" in body
        status, health = await call(http, "GET", f"{server.url}/healthz")
        assert status == 200 and health["zookeeper"] is False
        proxy.restore()

        async def created():
            status, _body = await call(http, "POST", f"{server.url}/function", definition())
            return status == 200

        await eventually(created, timeout=15, what="API back after ZooKeeper returns")
    finally:
        await server.stop()
        proxy.close()


async def test_session_expiry_is_survived(api, standins, http, zk_server):
    await standins.add()
    await eventually(lambda: api.deps.leader.is_leader, what="leader elected")
    expire_session(api.zk.client, zk_server.hosts)

    async def works():
        status, _ = await call(http, "POST", f"{api.url}/function", definition())
        return status == 200

    await eventually(works, timeout=15, what="API works after session expiry")
    await eventually(lambda: api.deps.leader.is_leader, timeout=15, what="leader again")


async def test_logs_plain_and_follow(api, standins, http):
    await standins.add()
    _, body = await call(http, "POST", f"{api.url}/function", definition())
    fid = body["id"]
    got = await eventually(lambda: running(http, api, fid), what="Running")
    cid = got["backends"][0]["backend"]["container_id"]
    status, text = await call(http, "GET", f"{api.url}/function/{fid}/logs")
    assert status == 200 and f"==> {cid}" in text and f"started {cid}" in text

    async with http.get(f"{api.url}/function/{fid}/logs?follow=true") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await resp.content.readuntil(b"\n\n")
        event = json.loads(first.decode().split("data: ", 1)[1])
        assert event == {"container_id": cid, "line": f"started {cid}"}
        await call(http, "DELETE", f"{api.url}/function/{fid}")
        # the stream ends once the container is gone
        await asyncio.wait_for(resp.content.read(), timeout=10)
        assert resp.content.at_eof()


async def test_health_metrics_openapi(api, standins, http):
    status, health = await call(http, "GET", f"{api.url}/healthz")
    assert status == 200 and health["zookeeper"] is True
    await eventually(lambda: api.deps.leader.is_leader, what="leader elected")
    async with http.get(f"{api.url}/metrics") as resp:
        text = await resp.text()
    assert "bismuth_api_leader 1.0" in text and "bismuth_api_requests_total" in text
    status, doc = await call(http, "GET", f"{api.url}/openapi.json")
    assert status == 200
    assert set(doc["paths"]) == {
        "/function",
        "/function/{id}",
        "/function/{id}/logs",
        "/function/{id}/secrets",
        "/function/{id}/secrets/{name}",
        "/group",
        "/group/{id}",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/status",
    }
    assert set(doc["paths"]["/function/{id}"]) >= {"get", "put", "delete"}


async def test_only_one_replica_leads(api_config, standins):
    replicas = [Api(api_config) for _ in range(2)]
    for r in replicas:
        await r.start()
    try:
        await eventually(
            lambda: sum(r.deps.leader.is_leader for r in replicas) == 1, what="one leader"
        )
        leader = next(r for r in replicas if r.deps.leader.is_leader)
        other = next(r for r in replicas if r is not leader)
        await leader.stop()
        await eventually(lambda: other.deps.leader.is_leader, timeout=15, what="failover")
    finally:
        for r in replicas:
            await r.stop()
