"""nginx as the frontend's data plane: route changes without reloads, large tables, serving
through restarts of the controller and of nginx and through ZooKeeper outages, graceful
stops, the control socket, and bad input at the public port."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import stat
import uuid
from typing import Any

import aiohttp
import pytest

from bismuth_core import cluster, layout, operations
from bismuth_core.zk import create, set_data
from bismuth_fe.controller import desired_routes
from bismuth_fe.server import Frontend
from tests.support.frontend import FrontendUnderTest, RequestLoop, nginx_pids, server_function
from tests.support.waiting import eventually
from tests.support.zkfaults import TcpProxy, expire_session_id

pytestmark = pytest.mark.integration


@pytest.fixture
def frontend_agent_port(standins) -> int:
    return standins.port


async def served_by(http: aiohttp.ClientSession, fe: FrontendUnderTest, host: str) -> str | None:
    async with http.get(fe.url + "/", headers={"Host": host}) as resp:
        await resp.read()
        return resp.headers.get("X-Bismuth-Container-ID") if resp.status == 200 else None


async def in_sync(fe: FrontendUnderTest) -> bool:
    wanted = desired_routes(fe.deps.cache.table, fe.config.agent_port)
    return await fe.plane.control.routes() == wanted


async def deploy(zk, http, fe, hosts=("app.test",), max_instances=1) -> uuid.UUID:
    fid = await operations.create_function(zk, server_function(hosts, max_instances))
    await eventually(lambda: served_by(http, fe, hosts[0]), what=f"{hosts[0]} served")
    return fid


# --- route changes ----------------------------------------------------------------------


async def test_a_thousand_route_changes_reach_nginx_without_a_reload(
    zk, standins, start_frontend, http
):
    await standins.add()
    fe = await start_frontend()
    first = await deploy(zk, http, fe, ("one.test",))
    second = await deploy(zk, http, fe, ("two.test",))
    container = {
        fid: str((await cluster.read_function(zk, fid)).backends[0].container_id)
        for fid in (first, second)
    }
    before = nginx_pids(fe)
    path = layout.route_path("app.test")
    await zk.commit([create(path, layout.encode_route(first))])
    for change in range(1000):
        fid = (first, second)[change % 2]
        if change:
            await zk.commit([set_data(path, layout.encode_route(fid))])
        await eventually(
            lambda fid=fid: _served_by_is(http, fe, container[fid]),
            interval=0.002,
            what=f"change {change} served",
        )
    assert nginx_pids(fe) == before  # no reload, no restart: the same master and workers
    assert fe.deps.controller.state.full_syncs == 1
    assert fe.deps.controller.state.deltas >= 1000


async def _served_by_is(http, fe, container: str) -> bool:
    return await served_by(http, fe, "app.test") == container


async def test_ten_thousand_routes_are_loaded_and_served(zk, standins, start_frontend, http):
    agent = await standins.add()
    fe = await start_frontend()
    fid = await deploy(zk, http, fe, ("seed.test",))
    (cid,) = agent.known
    hosts = [f"h{i}.many.test" for i in range(10_000)]
    for start in range(0, len(hosts), 1000):
        ops = [
            create(layout.route_path(h), layout.encode_route(fid))
            for h in hosts[start : start + 1000]
        ]
        await zk.commit(ops)

    async def all_loaded() -> bool:
        return (await fe.plane.control.status()).routes == len(hosts) + 1

    await eventually(all_loaded, timeout=120, what="10,001 routes in nginx")
    assert await in_sync(fe)
    for host in random.Random(7).sample(hosts, 200):
        assert await served_by(http, fe, host) == str(cid)
    before = nginx_pids(fe)
    for host in hosts[:100]:  # and they go again, as deltas
        await zk.delete(layout.route_path(host))

    async def deleted() -> bool:
        return (await fe.plane.control.status()).routes == len(hosts) + 1 - 100

    await eventually(deleted, timeout=60, what="100 routes gone")
    async with http.get(fe.url + "/", headers={"Host": hosts[0]}) as resp:
        assert resp.status == 404
    assert nginx_pids(fe) == before


# --- failures while serving -------------------------------------------------------------


async def test_killed_replica_fails_no_idempotent_request(zk, standins, start_frontend, http):
    victim, survivor = [await standins.add() for _ in range(2)]
    fe = await start_frontend()
    await deploy(zk, http, fe, max_instances=2)
    await eventually(lambda: fe.deps.cache.table.serving_backends == 2, what="two backends")
    await eventually(lambda: in_sync(fe), what="nginx in sync")
    loop = RequestLoop(http, fe.url + "/")
    await loop.grow(200)
    await victim.stop_http()  # its container dies: connections refused, still Running
    await loop.grow(500)
    outcomes = await loop.stop()
    assert set(outcomes) == {200}, outcomes
    assert survivor.requests.total() > 0 and victim.requests.total() > 0


async def test_zookeeper_loss_and_controller_restarts_fail_no_request(
    zk_server, zk_env, zk, standins, start_frontend, http
):
    await standins.add()
    proxy = TcpProxy(zk_server.port)
    try:
        fe = await start_frontend(zookeeper=proxy.hosts)
        await deploy(zk, http, fe)
        loop = RequestLoop(http, fe.url + "/")
        await loop.grow(100)
        # ZooKeeper away for longer than a session lasts: the cut connection, then the
        # session expired on the server (what a 20 s outage does, without the wait)
        session = fe.deps.zk.client.client_id
        proxy.cut()
        await asyncio.to_thread(expire_session_id, session, zk_server.hosts)
        await loop.grow(300)
        # meanwhile a new function the frontend cannot see yet
        await operations.create_function(zk, server_function(("later.test",)))
        # the controller restarts while ZooKeeper is still away: it cannot load, nginx serves
        await fe.controller.stop()
        replacement = Frontend(fe.config)
        starting = asyncio.create_task(replacement.start())
        await loop.grow(300)
        assert not starting.done()
        proxy.restore()
        await starting
        fe.controller = replacement
        await eventually(lambda: served_by(http, fe, "later.test"), timeout=30, what="later.test")
        # and a plain restart while serving
        await replacement.stop()
        again = Frontend(fe.config)
        await again.start()
        fe.controller = again
        await loop.grow(300)
        await eventually(lambda: again.deps.controller.state.synced, what="resynced")
        outcomes = await loop.stop()
        await again.stop()
    finally:
        proxy.close()
    assert set(outcomes) == {200}, outcomes


async def test_restarted_nginx_gets_the_table_again(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    table = fe.deps.controller.state.table
    assert fe.plane.stop(signal.SIGKILL) == -signal.SIGKILL
    fe.plane.start()
    await eventually(lambda: served_by(http, fe, "app.test"), what="served by the new nginx")
    assert fe.deps.controller.state.table != table
    assert fe.deps.controller.state.full_syncs == 2


async def test_graceful_stop_lets_in_flight_requests_finish(zk, standins, start_frontend, http):
    agent = await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    before = agent.requests.total()

    async def slow() -> int:
        async with http.get(fe.url + "/slow?seconds=2", headers={"Host": "app.test"}) as resp:
            await resp.read()
            return resp.status

    request = asyncio.create_task(slow())
    await eventually(lambda: agent.requests.total() > before, what="in flight")
    status = await asyncio.to_thread(fe.plane.stop, signal.SIGQUIT)
    assert (await request, status) == (200, 0)


# --- the control socket -----------------------------------------------------------------


async def test_control_socket_is_roots_alone_and_refuses_bad_input(zk, standins, start_frontend):
    fe = await start_frontend()
    run_dir = fe.config.control_socket.parent
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700 and os.stat(run_dir).st_uid == 0
    before = await fe.plane.control.routes()
    connector = aiohttp.UnixConnector(path=str(fe.config.control_socket))
    async with aiohttp.ClientSession(connector=connector) as control:

        async def send(method: str, path: str, body: Any) -> tuple[int, dict]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with control.request(method, "http://nginx" + path, data=data) as resp:
                return resp.status, await resp.json(content_type=None)

        table = fe.deps.controller.state.table
        bad_route = {"function": "f", "direct": [{"address": "x", "port": 1, "container": "c"}]}
        for method, body, status, words in [
            ("PUT", b"{not json", 400, "not a JSON object"),
            ("PUT", {"routes": {}}, 400, "table"),
            ("PUT", {"table": "t", "routes": {"a b": {"function": "f"}}}, 400, "bad host"),
            ("PUT", {"table": "t", "routes": {"a.test": bad_route}}, 400, "malformed backend"),
            ("PATCH", {"table": "other", "set": {}}, 409, "not the one in place"),
            ("PATCH", {"table": table, "delete": [1]}, 400, "list of hosts"),
            ("DELETE", {}, 405, "GET, PUT or PATCH"),
        ]:
            got, answer = await send(method, "/v1/routes", body)
            assert (got, words in answer["error"]) == (status, True), (method, body, answer)
        got, answer = await send("GET", "/v1/nothing", b"")
        assert got == 404
    assert await fe.plane.control.routes() == before


# --- bad input at the public port -------------------------------------------------------


async def raw_request(fe: FrontendUnderTest, request: bytes) -> tuple[int, dict | None]:
    host, port = fe.config.public_address()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, None
    try:
        return int(head.split()[1]), json.loads(body)
    except ValueError:
        return int(head.split()[1]), None


async def test_bad_input_gets_a_clear_4xx_and_no_worker_dies(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend(max_header_size=4096, max_header_buffers=4)
    await deploy(zk, http, fe)
    before = nginx_pids(fe)
    cases = [
        (b"GET / HTTP/1.1\r\nHost: a b.test\r\nConnection: close\r\n\r\n", 400, "bad request"),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n", 400, "bad request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n", 400, "bad request"),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "bad request"),
        (b"GET / HTTP/1.0\r\n\r\n", 400, "missing Host"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 404, "127.0.0.1"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n", 414, "4096 bytes"),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431, "4096"),
        (
            b"GET / HTTP/1.1\r\nHost: app.test\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"h" * 3000) for i in range(8))
            + b"\r\n",
            431,
            "larger than the limit",
        ),
        (b"GET http://app.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", 400, "does not match"),
        (b"GET https://other.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n", 400, "does not match"),
        (b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: x\r\n\r\n", 400, "bad request"),
        (
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "transfer coding",
        ),
        (b"GARBAGE\r\n\r\n", 400, "bad request"),
        (b"GET / HTTP/9.9\r\nHost: app.test\r\n\r\n", 505, None),
    ]
    for request, status, words in cases:
        if b"Connection: close" not in request:  # every answer ends its connection
            request = request.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
        got, body = await raw_request(fe, request)
        assert got == status, (request[:60], got, body)
        if words is not None:
            assert body is not None and words in body["error"], (request[:60], body)
    assert nginx_pids(fe) == before
    assert await served_by(http, fe, "app.test")


async def test_slow_clients_are_cut_off_and_others_served(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend(client_timeout=1.0)
    await deploy(zk, http, fe)
    before = nginx_pids(fe)
    host, port = fe.config.public_address()
    slow = []
    for _ in range(20):  # each sends half a head, then nothing
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: app.")
        await writer.drain()
        slow.append((reader, writer))
    for _ in range(20):
        assert await served_by(http, fe, "app.test")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for reader, writer in slow:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing to answer
        writer.close()
    assert loop.time() - started < 10  # closed by the frontend, after about client_timeout
    # a body that stops half way: 408 or a closed connection, never a hung worker
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /digest HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nabc")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer == b"" or answer.split()[1] in (b"408", b"400")
    assert nginx_pids(fe) == before
    assert await served_by(http, fe, "app.test")
