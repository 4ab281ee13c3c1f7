"""The frontend (nginx and its controller) against a real ZooKeeper and stand-in agents:
routing, retries, streaming, limits, headers, rolling updates, and serving through ZooKeeper
outages. Stand-in containers are connected to straight, as Server-mode containers are."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from bismuth_core import cluster, layout, operations
from bismuth_core.layout import ContainerStatus
from bismuth_fe.controller import desired_routes
from tests.support.frontend import FrontendUnderTest as Frontend
from tests.support.frontend import server_function
from tests.support.traceparent import parse_traceparent
from tests.support.waiting import eventually
from tests.support.zkfaults import TcpProxy, expire_session

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def frontend_agent_port(standins) -> int:
    return standins.port


definition = server_function


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    fe: Frontend,
    host: str,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: Any = None,
) -> tuple[int, CIMultiDictProxy[str], Any]:
    """One request through the frontend: (status, headers, parsed JSON body or text)."""
    sent = {"Host": host, **(headers or {})}
    async with http.request(method, fe.url + path, headers=sent, data=data) as resp:
        text = await resp.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, resp.headers, body


async def serving(http: aiohttp.ClientSession, fe: Frontend, host: str) -> bool:
    status, _, _ = await call(http, fe, host)
    return status == 200


async def running(zk, fid: uuid.UUID) -> set[uuid.UUID]:
    view = await cluster.read_function(zk, fid)
    statuses = await cluster.read_statuses(zk, view.backends)
    return {b.container_id for b, s in statuses.items() if s == ContainerStatus.RUNNING}


async def deploy(zk, http, fe, hosts=("app.test",), max_instances=1) -> uuid.UUID:
    fid = await operations.create_function(zk, definition(hosts, max_instances))
    await eventually(lambda: serving(http, fe, hosts[0]), what=f"{hosts[0]} served")
    return fid


async def health(http: aiohttp.ClientSession, fe: Frontend) -> dict:
    async with http.get(fe.admin_url + "/healthz") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def in_sync(fe: Frontend) -> bool:
    """Whether nginx holds exactly the controller's current table."""
    wanted = desired_routes(fe.deps.cache.table, fe.config.agent_port)
    return await fe.plane.control.routes() == wanted


async def serving_backends(http: aiohttp.ClientSession, fe: Frontend, count: int) -> bool:
    return (await health(http, fe))["serving_backends"] == count and await in_sync(fe)


async def metric(fe: Frontend, http: aiohttp.ClientSession, name: str, **labels: str) -> float:
    async with http.get(fe.admin_url + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# --- routing ----------------------------------------------------------------------------


async def test_routes_each_host_to_its_function(zk, standins, start_frontend, http):
    for _ in range(2):
        await standins.add()
    fe = await start_frontend()
    fa = await deploy(zk, http, fe, ("a.test",), max_instances=2)
    fb = await deploy(zk, http, fe, ("b.test",))
    containers = {
        fid: {b.container_id for b in (await cluster.read_function(zk, fid)).backends}
        for fid in (fa, fb)
    }
    for host, fid in [("a.test", fa), ("A.Test.:8080", fa), ("b.test", fb)] * 4:
        status, headers, body = await call(http, fe, host)
        assert status == 200
        cid = uuid.UUID(headers["X-Bismuth-Container-ID"])
        assert cid in containers[fid]
        assert body["container_id"] == str(cid)
        assert parse_traceparent(headers["traceparent"]) is not None


async def test_path_query_method_and_body_pass_through(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    status, _, body = await call(
        http, fe, "app.test", "/a/b%20c/?x=1&y=two", method="PATCH", data=b"12345"
    )
    assert status == 200
    assert body["method"] == "PATCH"
    assert body["path"] == "/a/b c/"
    assert body["query"] == "x=1&y=two"
    assert body["body_length"] == 5
    assert body["headers"]["Host"] == "app.test"


async def test_unknown_host_is_404_json(zk, standins, start_frontend, http):
    fe = await start_frontend()
    status, headers, body = await call(http, fe, "nobody.test", "/x")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert "nobody.test" in body["error"]


async def test_missing_host_is_400_json(start_frontend):
    fe = await start_frontend()
    host, port = fe.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400"
    assert "Host" in json.loads(body)["error"]


async def test_function_without_running_container_is_503(zk, standins, start_frontend, http):
    agent = await standins.add(status=ContainerStatus.STARTING)
    fe = await start_frontend()
    fid = await operations.create_function(zk, definition())

    async def unavailable() -> bool:
        status, _, body = await call(http, fe, "app.test")
        return status == 503 and str(fid) in body["error"]

    await eventually(unavailable, what="503 naming the function")
    (backend,) = (await cluster.read_function(zk, fid)).backends
    await agent.set_status(backend.container_id, ContainerStatus.RUNNING)
    await eventually(lambda: serving(http, fe, "app.test"), what="served once Running")


async def test_prefers_backends_on_live_nodes(zk, standins, start_frontend, http):
    for _ in range(2):
        await standins.add()
    fe = await start_frontend()
    fid = await deploy(zk, http, fe, max_instances=2)
    backends = (await cluster.read_function(zk, fid)).backends
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    gone, kept = backends
    await zk.delete(layout.alive_path(gone.ip))
    await eventually(lambda: serving_backends(http, fe, 1), what="only the live node's")
    for _ in range(10):
        status, headers, _ = await call(http, fe, "app.test")
        assert (status, headers["X-Bismuth-Container-ID"]) == (200, str(kept.container_id))
    # no Running backend on a live node: the Running ones are used anyway
    await zk.delete(layout.alive_path(kept.ip))
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    seen = set()
    for _ in range(20):
        status, headers, _ = await call(http, fe, "app.test")
        assert status == 200
        seen.add(headers["X-Bismuth-Container-ID"])
    assert seen <= {str(b.container_id) for b in backends}


# --- retries ----------------------------------------------------------------------------


async def test_retries_on_another_backend_when_agent_is_down(zk, standins, start_frontend, http):
    down, up = [await standins.add() for _ in range(2)]
    fe = await start_frontend()
    fid = await deploy(zk, http, fe, max_instances=2)
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    (survivor,) = [b for b in (await cluster.read_function(zk, fid)).backends if b.ip == up.ip]
    await down.stop_http()  # still Running in ZooKeeper, but refuses connections
    for _ in range(30):
        status, headers, _ = await call(http, fe, "app.test")
        assert (status, headers["X-Bismuth-Container-ID"]) == (200, str(survivor.container_id))
    await eventually(
        lambda: _metric_at_least(fe, http, "bismuth_fe_upstream_retries_total", 1),
        what="retries counted",
    )


async def test_all_backends_unreachable_is_502(zk, standins, start_frontend, http):
    agents = [await standins.add() for _ in range(2)]
    fe = await start_frontend()
    await deploy(zk, http, fe, max_instances=2)
    for agent in agents:
        await agent.stop_http()
    status, _, body = await call(http, fe, "app.test")
    assert status == 502
    assert "no backend could be reached" in body["error"]


async def test_agent_path_retries_on_another_agent_and_resends_the_body(
    zk, standins, start_frontend, http
):
    # containers announced without an endpoint (Executable mode, older agents): through agents
    down, up = [await standins.add(direct=False) for _ in range(2)]
    fe = await start_frontend()
    fid = await deploy(zk, http, fe, max_instances=2)
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    (survivor,) = [b for b in (await cluster.read_function(zk, fid)).backends if b.ip == up.ip]
    await down.stop_http()
    before = up.requests[survivor.container_id]
    for i in range(20):
        method = "POST" if i % 2 else "GET"
        status, headers, body = await call(http, fe, "app.test", "/x?y=1", method, data=b"b" * i)
        assert (status, headers["X-Bismuth-Container-ID"]) == (200, str(survivor.container_id))
        assert (body["method"], body["path"], body["query"]) == (method, "/x", "y=1")
        assert body["body_length"] == i  # a body sent again after a refused connect
    assert up.requests[survivor.container_id] == before + 20
    await eventually(
        lambda: _metric_at_least(fe, http, "bismuth_fe_upstream_retries_total", 1),
        what="retries counted",
    )
    await up.stop_http()
    status, _, body = await call(http, fe, "app.test")
    assert status == 502 and "no backend could be reached" in body["error"]


async def test_agent_answers_pass_through_unchanged(zk, standins, start_frontend, http):
    agent = await standins.add(direct=False)
    fe = await start_frontend()
    await deploy(zk, http, fe)
    status, headers, body = await call(http, fe, "app.test", "/stream?bytes=100000")
    assert (status, len(body)) == (200, 100000)
    assert "X-Bismuth-Not-Forwarded" not in headers
    assert headers["X-Bismuth-Container-ID"] in {str(c) for c in agent.known}


async def test_reset_before_response_is_retried_for_idempotent_methods_only(
    zk, standins, start_frontend, http
):
    resetting, _ = [await standins.add() for _ in range(2)]
    fe = await start_frontend()
    await deploy(zk, http, fe, max_instances=2)
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    await resetting.stop_http()
    hits = 0

    async def read_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            hits += 1
        writer.transport.abort()  # the request arrived; no response ever comes

    (endpoint,) = resetting.endpoints.values()
    server = await asyncio.start_server(read_then_reset, endpoint.address, endpoint.port)
    try:
        for _ in range(30):
            status, headers, _ = await call(http, fe, "app.test")
            assert status == 200 and headers["X-Bismuth-Container-ID"]
        assert hits >= 1
        hits = 0
        statuses = [(await call(http, fe, "app.test", method="POST"))[0] for _ in range(30)]
        assert set(statuses) == {200, 502}
        assert statuses.count(502) == hits  # each reset POST failed, none was sent twice
    finally:
        server.close()
        await server.wait_closed()


async def test_retries_after_connect_timeout(zk, standins, start_frontend, http):
    stuck, up = [await standins.add() for _ in range(2)]
    fe = await start_frontend(connect_timeout=0.3, request_timeout=5)
    fid = await deploy(zk, http, fe, max_instances=2)
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    (survivor,) = [b for b in (await cluster.read_function(zk, fid)).backends if b.ip == up.ip]
    await stuck.stop_http()
    # a listener whose accept queue is full: new connections hang in SYN-SENT
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    (endpoint,) = stuck.endpoints.values()
    listener.bind((endpoint.address, endpoint.port))
    listener.listen(0)
    filler = socket.create_connection((endpoint.address, endpoint.port), timeout=2)
    try:
        for _ in range(12):
            status, headers, _ = await call(http, fe, "app.test")
            assert (status, headers["X-Bismuth-Container-ID"]) == (
                200,
                str(survivor.container_id),
            )
        await eventually(
            lambda: _metric_at_least(fe, http, "bismuth_fe_upstream_retries_total", 1),
            what="retries counted",
        )
    finally:
        filler.close()
        listener.close()


async def test_upstream_timeout_is_504(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend(request_timeout=0.5)
    await deploy(zk, http, fe)
    status, _, body = await call(http, fe, "app.test", "/slow?seconds=5")
    assert status == 504
    assert "did not answer within 0.5s" in body["error"]


# --- load balancing ---------------------------------------------------------------------


async def test_least_outstanding_sends_new_requests_to_the_idle_backend(
    zk, standins, start_frontend, http
):
    agents = [await standins.add() for _ in range(2)]
    fe = await start_frontend()
    fid = await deploy(zk, http, fe, max_instances=2)
    await eventually(lambda: serving_backends(http, fe, 2), what="both backends serving")
    backends = (await cluster.read_function(zk, fid)).backends
    before = {b.container_id: sum(a.requests[b.container_id] for a in agents) for b in backends}
    slow = asyncio.create_task(call(http, fe, "app.test", "/slow?seconds=30"))

    def busy_backend() -> layout.Backend | None:
        grown = [
            b
            for b in backends
            if sum(a.requests[b.container_id] for a in agents) > before[b.container_id]
        ]
        return grown[0] if grown else None

    busy = await eventually(busy_backend, what="slow request reached a backend")
    (idle,) = [b for b in backends if b != busy]
    try:
        for _ in range(10):
            status, headers, _ = await call(http, fe, "app.test")
            assert (status, headers["X-Bismuth-Container-ID"]) == (200, str(idle.container_id))
        await eventually(
            lambda: _metric_is(fe, http, "bismuth_fe_outstanding_requests", 1),
            what="one request outstanding",
        )
    finally:
        slow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slow
    await eventually(
        lambda: _metric_is(fe, http, "bismuth_fe_outstanding_requests", 0),
        what="cancelled request released its backend",
    )


# --- bodies -----------------------------------------------------------------------------


async def test_streams_a_64_mib_response(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    size = 64 * MiB
    received = 0
    async with http.get(f"{fe.url}/stream?bytes={size}", headers={"Host": "app.test"}) as resp:
        assert resp.status == 200
        assert resp.headers.get("Transfer-Encoding") == "chunked"  # not buffered to a length
        async for chunk in resp.content.iter_chunked(MiB):
            received += len(chunk)
    assert received == size


async def test_streams_a_20_mib_request_body_to_the_container(zk, standins, start_frontend, http):
    agent = await standins.add()
    fe = await start_frontend(max_body_size=32 * MiB)
    await deploy(zk, http, fe)
    (cid,) = agent.known
    size, piece = 20 * MiB, 256 * 1024
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(size // piece):
            if i == size // piece // 2:  # half sent: the container must have some already
                await eventually(lambda: agent.received[cid] >= MiB, what="body streamed")
            chunk = bytes([i % 251]) * piece
            sent.update(chunk)
            yield chunk

    status, _, answer = await call(http, fe, "app.test", "/digest", method="POST", data=body())
    assert status == 200
    assert answer == {"length": size, "sha256": sent.hexdigest()}


async def test_content_length_over_limit_is_413_without_contacting_a_backend(
    zk, standins, start_frontend, http
):
    agent = await standins.add()
    fe = await start_frontend(max_body_size=1000)
    await deploy(zk, http, fe)
    before = sum(agent.requests.values())
    status, _, body = await call(http, fe, "app.test", "/upload", method="POST", data=b"x" * 1001)
    assert status == 413
    assert "1001 bytes" in body["error"]
    assert sum(agent.requests.values()) == before
    status, _, _ = await call(http, fe, "app.test", "/upload", method="POST", data=b"x" * 1000)
    assert status == 200


async def test_chunked_body_over_limit_is_413(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend(max_body_size=MiB)
    await deploy(zk, http, fe)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * (256 * 1024)

    status, _, answer = await call(http, fe, "app.test", "/upload", method="POST", data=body())
    assert status == 413
    assert "exceeds" in answer["error"]


async def test_response_is_aborted_when_the_backend_breaks_mid_body(
    zk, standins, start_frontend, http
):
    agent = await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    async with http.get(
        f"{fe.url}/stream?bytes={4096 * MiB}", headers={"Host": "app.test"}
    ) as resp:
        assert resp.status == 200
        await resp.content.readexactly(MiB)
        # not reading meanwhile: backpressure holds the stream until the agent cuts it
        await agent.stop_http()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for _ in resp.content.iter_chunked(MiB):
                pass


# --- headers ----------------------------------------------------------------------------


async def test_hop_by_hop_headers_dropped_and_forwarded_headers_set(
    zk, standins, start_frontend, http
):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    status, _, body = await call(
        http,
        fe,
        "app.test:8000",
        headers={
            "Connection": "keep-alive, X-Per-Hop",
            "X-Per-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eDp5",
            "Trailer": "X-Checksum",
            "X-End-To-End": "kept",
            "X-Forwarded-For": "198.51.100.7",
        },
    )
    assert status == 200
    seen = {k.lower(): v for k, v in body["headers"].items()}
    for name in ("x-per-hop", "keep-alive", "te", "proxy-authorization", "trailer"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == "kept"
    assert seen["host"] == "app.test:8000"
    # the peer is no proxy the operator trusts: what it claims is replaced by its address
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "app.test:8000"


async def test_forwarded_headers_kept_only_from_trusted_proxies(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend(trusted_proxies=("127.0.0.0/8",))
    await deploy(zk, http, fe)
    forwarded = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    _, _, body = await call(http, fe, "app.test", headers=forwarded)
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    _, _, body = await call(http, fe, "app.test", headers={"X-Forwarded-Proto": "gopher"})
    assert body["headers"]["X-Forwarded-Proto"] == "http"


async def test_headers_from_a_container_never_steer_the_frontend(
    zk, standins, start_frontend, http
):
    agent = await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    (cid,) = agent.known
    status, headers, body = await call(http, fe, "app.test", "/accel")
    # X-Accel-Redirect would have nginx serve another location: it is neither obeyed nor passed
    assert (status, body) == (200, "the container's own body")
    assert not [h for h in headers if h.lower().startswith("x-accel")]
    assert headers.getall("X-Bismuth-Container-ID") == [str(cid)]
    assert "X-Bismuth-Not-Forwarded" not in headers


async def test_traceparent_continued_or_started(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _, headers, body = await call(
        http, fe, "app.test", headers={"traceparent": incoming, "tracestate": "v=1"}
    )
    sent = parse_traceparent(body["headers"]["traceparent"])
    assert headers["traceparent"] == body["headers"]["traceparent"]
    assert sent is not None and sent.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert sent.span_id != "00f067aa0ba902b7" and sent.flags == "01"
    assert body["headers"]["tracestate"] == "v=1"

    for bad in (None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "junk"):
        extra = {"tracestate": "v=1"} | ({"traceparent": bad} if bad else {})
        _, headers, body = await call(http, fe, "app.test", headers=extra)
        started = parse_traceparent(headers["traceparent"])
        assert started is not None and started.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
        assert body["headers"]["traceparent"] == headers["traceparent"]
        assert "tracestate" not in body["headers"]


TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("values", "continued_flags"),
    [
        ([f"00-{TRACE}-{SPAN}-01"], "01"),
        ([f"00-{TRACE}-{SPAN}-00"], "00"),
        ([f" 00-{TRACE}-{SPAN}-01 "], "01"),
        ([f"01-{TRACE}-{SPAN}-01-future-field"], "01"),
        ([f"01-{TRACE}-{SPAN}-01"], "01"),
        ([f"00-{TRACE}-{SPAN}-01-extra"], None),  # version 00 has exactly 4 fields
        ([f"01-{TRACE}-{SPAN}-01x"], None),
        ([f"ff-{TRACE}-{SPAN}-01"], None),
        ([f"00-{TRACE.upper()}-{SPAN}-01"], None),
        ([f"00-{'0' * 32}-{SPAN}-01"], None),
        ([f"00-{TRACE}-{'0' * 16}-01"], None),
        ([f"00-{TRACE[:-1]}g-{SPAN}-01"], None),
        ([f"00-{TRACE}-{SPAN}-0g"], None),
        ([f"00_{TRACE}_{SPAN}_01"], None),
        ([f"0-{TRACE}-{SPAN}-01x"], None),
        ([""], None),
        ([f"00-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-01"], None),  # repeated
    ],
)
async def test_traceparent_rules(zk, standins, start_frontend, http, values, continued_flags):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    sent = [("Host", "app.test"), *(("traceparent", v) for v in values)]
    async with http.get(fe.url + "/", headers=sent) as resp:
        assert resp.status == 200
        answered = parse_traceparent(resp.headers["traceparent"])
        upstream = (await resp.json())["headers"]["traceparent"]
    assert answered is not None and answered.header == upstream
    assert answered.span_id != SPAN
    if continued_flags is None:
        assert answered.trace_id != TRACE and answered.flags == "01"
    else:
        assert (answered.trace_id, answered.flags) == (TRACE, continued_flags)


# --- changes and outages ----------------------------------------------------------------


async def test_rolling_update_has_no_failed_requests(zk, standins, start_frontend, http):
    for _ in range(2):
        await standins.add()
    fe = await start_frontend()
    fid = await deploy(zk, http, fe)
    results: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            status, headers, _ = await call(http, fe, "app.test")
            results.append((status, headers.get("X-Bismuth-Container-ID", "")))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:
        await eventually(lambda: len(results) >= 20, what="traffic flowing")
        view = await operations.update_function(zk, fid, None)
        new = {str(b.container_id) for b in view.active}
        await eventually(lambda: any(c in new for _, c in results), what="traffic on new")
        await eventually(lambda: operations.finish_rollout(zk, fid), what="rollout finished")
        mark = len(results)
        await eventually(
            lambda: len(results) > mark + 40 and all(c in new for _, c in results[-20:]),
            what="traffic only on the new container",
        )
    finally:
        stop.set()
        await asyncio.gather(*clients)
    failed = [r for r in results if r[0] != 200]
    assert failed == [], f"{len(failed)} of {len(results)} requests failed"


async def test_serves_from_cache_while_zookeeper_is_unreachable(
    zk_server, zk, standins, start_frontend, http
):
    await standins.add()
    proxy = TcpProxy(zk_server.port)
    try:
        fe = await start_frontend(zookeeper=proxy.hosts)
        old = await deploy(zk, http, fe, ("old.test",))
        proxy.cut()
        await eventually(lambda: _health_says_disconnected(http, fe), what="frontend disconnected")
        for _ in range(10):
            assert await serving(http, fe, "old.test")
        # changes the frontend cannot see yet: a new function, and old.test renamed (its
        # container keeps running, retiring, so the agent still serves it)
        new = await operations.create_function(zk, definition(("new.test",)))
        await operations.update_function(zk, old, definition(("renamed.test",)))
        await eventually(lambda: running(zk, new), what="new function Running")
        status, _, _ = await call(http, fe, "new.test")
        assert status == 404
        assert await serving(http, fe, "old.test")  # still the last table
        proxy.restore()
        await eventually(lambda: serving(http, fe, "new.test"), timeout=20, what="reload")
        await eventually(lambda: serving(http, fe, "renamed.test"), what="renamed route")
        await eventually(lambda: _status_is(http, fe, "old.test", 404), what="old route gone")
    finally:
        proxy.close()


async def _health_says_disconnected(http: aiohttp.ClientSession, fe: Frontend) -> bool:
    return (await health(http, fe))["zookeeper_connected"] is False


async def _metric_is(fe: Frontend, http: aiohttp.ClientSession, name: str, value: float) -> bool:
    return await metric(fe, http, name) == value


async def _metric_at_least(
    fe: Frontend, http: aiohttp.ClientSession, name: str, value: float, **labels: str
) -> bool:
    return await metric(fe, http, name, **labels) >= value


async def _status_is(http, fe, host: str, expected: int) -> bool:
    status, _, _ = await call(http, fe, host)
    return status == expected


async def test_serves_through_session_expiry_and_follows_later_changes(
    zk_server, zk, standins, start_frontend, http
):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe, ("first.test",))
    await asyncio.to_thread(expire_session, fe.deps.zk.client, zk_server.hosts)
    for _ in range(5):
        assert await serving(http, fe, "first.test")
    await operations.create_function(zk, definition(("second.test",)))
    await eventually(lambda: serving(http, fe, "second.test"), timeout=20, what="new route")
    assert await serving(http, fe, "first.test")


# --- admin ------------------------------------------------------------------------------


async def test_admin_healthz_and_metrics_only_on_admin_port(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    fid = str(await deploy(zk, http, fe))
    state = await health(http, fe)
    assert state["zookeeper_connected"] is True
    assert (state["routes"], state["serving_backends"]) == (1, 1)
    assert state["nginx"]["synced"] is True and state["nginx"]["routes"] == 1
    await eventually(
        lambda: _metric_at_least(
            fe, http, "bismuth_fe_requests_total", 1, function=fid, code="2xx"
        ),
        what="requests counted per function",
    )
    assert await metric(fe, http, "bismuth_fe_zookeeper_connected") == 1
    assert await metric(fe, http, "bismuth_fe_routes") == 1
    assert await metric(fe, http, "bismuth_fe_nginx_synced") == 1
    assert await metric(fe, http, "bismuth_fe_upstream_latency_seconds_count", function=fid) >= 1
    assert await metric(fe, http, "bismuth_fe_request_duration_seconds_count", function=fid) >= 1
    await call(http, fe, "nobody.test")
    await eventually(
        lambda: _metric_at_least(
            fe, http, "bismuth_fe_requests_total", 1, function="-", code="4xx"
        ),
        what="unrouted requests counted",
    )
    # on the public port these paths are routed by Host like any other
    status, _, body = await call(http, fe, "nobody.test", "/healthz")
    assert status == 404 and "nobody.test" in body["error"]
    status, _, body = await call(http, fe, "app.test", "/metrics")
    assert status == 200 and body["path"] == "/metrics"


async def test_head_and_fixed_length_responses_pass_through(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    async with http.get(fe.url + "/x", headers={"Host": "app.test"}) as resp:
        length = int(resp.headers["Content-Length"])  # kept, not re-chunked
        assert "Transfer-Encoding" not in resp.headers
        assert len(await resp.read()) == length
    async with http.head(fe.url + "/x", headers={"Host": "app.test"}) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
        assert "X-Bismuth-Container-ID" in resp.headers


async def test_odd_request_targets(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    host, port = fe.url.removeprefix("http://").split(":")

    async def raw(request: bytes) -> tuple[int, dict]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    status, body = await raw(b"GET //twice//x/../y?q=%2F HTTP/1.0\r\nHost: app.test\r\n\r\n")
    assert status == 200
    assert body["path"] == "//twice//x/../y"  # not normalized on the way
    assert body["query"] == "q=/"
    # absolute-form: the target's authority selects the function, and the Host header, if
    # any, must name the same host (the container sees what routed the request)
    status, body = await raw(b"GET http://app.test/abs?x=1 HTTP/1.0\r\n\r\n")
    assert (status, body["path"], body["query"]) == (200, "/abs", "x=1")
    assert body["headers"]["Host"] == "app.test"
    status, body = await raw(b"GET http://APP.test:80/abs HTTP/1.0\r\nHost: app.test:80\r\n\r\n")
    assert (status, body["path"]) == (200, "/abs")
    status, body = await raw(b"GET http://app.test/abs HTTP/1.0\r\nHost: other.test\r\n\r\n")
    assert status == 400 and "does not match" in body["error"] and "other.test" in body["error"]
    status, body = await raw(b"GET http://other.test/abs HTTP/1.0\r\nHost: app.test\r\n\r\n")
    assert status == 400 and "does not match" in body["error"]
    status, body = await raw(b"OPTIONS * HTTP/1.0\r\nHost: app.test\r\n\r\n")
    assert status == 400 and "bad request" in body["error"]


async def test_expect_100_continue(zk, standins, start_frontend, http):
    await standins.add()
    fe = await start_frontend()
    await deploy(zk, http, fe)
    async with http.post(
        fe.url + "/upload", data=b"z" * 5000, expect100=True, headers={"Host": "app.test"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_length"] == 5000
