"""bismuthd's HTTP server on loopback, with loopback HTTP servers playing containers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from bismuth_agent.http import (
    AgentMetrics,
    ExecOutputTooLarge,
    ExecResult,
    ExecTimeout,
    HttpDeps,
    InvokeLimits,
    create_app,
)
from bismuth_agent.logstore import LogStore
from bismuth_agent.proxy import ProxyLimits
from bismuth_agent.timeline import Timelines
from bismuth_core.credentials import AGENT_HEADER, FrontendCredentials
from tests.support.waiting import eventually
from tests.support.zkserver import free_port


@dataclass
class FakeContainer:
    container_id: uuid.UUID
    address: tuple[str, int] | None
    running: bool = True
    exit_code: int = 0
    slow: bool = False
    hold: asyncio.Event | None = None  # runs wait for it
    runs: list[str] = field(default_factory=list)  # "started", "done", "cancelled"

    def serving(self) -> bool:
        return self.running

    def server_address(self) -> tuple[str, int] | None:
        return self.address

    async def execute(self, stdin, timeout: float, max_output: int) -> ExecResult:
        """As the runtime does: the body is read as the program runs, within ``timeout``."""
        self.runs.append("started")
        try:
            if self.hold is not None:
                await self.hold.wait()
            data = await asyncio.wait_for(_consume(stdin), timeout)
        except asyncio.CancelledError:
            self.runs.append("cancelled")
            raise
        except TimeoutError:
            raise ExecTimeout() from None
        self.runs.append("done")
        if self.slow:
            raise ExecTimeout()
        if len(data) > max_output:
            raise ExecOutputTooLarge()
        return ExecResult(self.exit_code, data.upper(), b"oops" if self.exit_code else b"")


async def _consume(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


class Directory:
    def __init__(self) -> None:
        self.containers: dict[uuid.UUID, FakeContainer] = {}

    def lookup(self, cid):
        return self.containers.get(cid)

    def known(self, cid):
        return cid in self.containers

    def health(self):
        return {"containers": len(self.containers)}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


CREDENTIALS = FrontendCredentials.from_frontend_key(b"k" * 32)
AUTH = {AGENT_HEADER: CREDENTIALS.agent}


@pytest.fixture
async def container_server() -> AsyncIterator[tuple[str, int]]:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response(
            {
                "path": request.path,
                "query": request.query_string,
                "len": len(body),
                "connection_header": request.headers.get("Keep-Alive"),
                "credential": request.headers.get(AGENT_HEADER),
            },
            headers={"X-From": "container"},
        )

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner, url = await serve(app)
    yield ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    await runner.cleanup()


LIMITS = InvokeLimits(
    exec_timeout=1.0,
    exec_concurrency=1,
    exec_max_body=1024,
    exec_max_output=512,
    proxy=ProxyLimits(connect_timeout=0.3, idle_timeout=2.0, max_connections=2),
)


@pytest.fixture
async def agent(tmp_path) -> AsyncIterator[tuple[str, Directory, LogStore]]:
    directory = Directory()
    store = LogStore(tmp_path / "logs", max_bytes=1 << 20)
    deps = HttpDeps(directory, store, AgentMetrics.create(), CREDENTIALS, LIMITS)
    runner, url = await serve(create_app(deps))
    yield url, directory, store
    await runner.cleanup()


async def test_server_mode_is_proxied_with_path_query_and_container_id(agent, container_server):
    url, directory, _ = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, container_server)
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.post(
            f"{url}/invoke/{cid}/a/b?x=1",
            data=b"z" * 5000,
            headers={"Keep-Alive": "timeout=5", "Connection": "keep-alive"},
        ) as r,
    ):
        body = await r.json()
        assert r.status == 200
        assert r.headers["X-Bismuth-Container-ID"] == str(cid)
        assert r.headers["X-From"] == "container"
    assert body == {
        "path": "/a/b",
        "query": "x=1",
        "len": 5000,
        "connection_header": None,
        "credential": None,  # the agent's credential never reaches a container
    }


async def test_unknown_or_not_running_is_503_not_forwarded(agent, container_server):
    url, directory, _ = agent
    stopped = uuid.uuid4()
    directory.containers[stopped] = FakeContainer(stopped, container_server, running=False)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for cid in (uuid.uuid4(), stopped, "not-a-uuid"):
            async with http.get(f"{url}/invoke/{cid}/") as r:
                assert r.status == 503
                assert r.headers["X-Bismuth-Not-Forwarded"] == "1"
                assert "error" in await r.json()


async def test_server_that_refuses_connections_is_503_not_forwarded(agent):
    url, directory, _ = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, ("127.0.0.1", free_port()))
    async with aiohttp.ClientSession(headers=AUTH) as http, http.get(f"{url}/invoke/{cid}") as r:
        body = await r.json()
        assert r.status == 503 and r.headers["X-Bismuth-Not-Forwarded"] == "1"
        assert f"container {cid} does not accept connections" in body["error"]


async def test_executable_mode(agent):
    url, directory, _ = agent
    ok, failing, slow = (uuid.uuid4() for _ in range(3))
    directory.containers[ok] = FakeContainer(ok, None)
    directory.containers[failing] = FakeContainer(failing, None, exit_code=3)
    directory.containers[slow] = FakeContainer(slow, None, slow=True)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{url}/invoke/{ok}", data=b"hello") as r:
            assert r.status == 200 and await r.read() == b"HELLO"
            assert r.headers["X-Bismuth-Exit-Code"] == "0"
        async with http.post(f"{url}/invoke/{failing}", data=b"x") as r:
            body = await r.json()
            assert r.status == 502 and "status 3" in body["error"] and body["stderr"] == "oops"
        async with http.post(f"{url}/invoke/{slow}", data=b"x") as r:
            assert r.status == 504
        async with http.post(f"{url}/invoke/{ok}", data=b"x" * 2048) as r:
            assert r.status == 413  # declared too large: refused before any slot

        async def streamed():  # no length declared: found too large as it is read
            for _ in range(4):
                yield b"x" * 512

        async with http.post(f"{url}/invoke/{ok}", data=streamed()) as r:
            assert r.status == 413 and "over 1024 bytes" in (await r.json())["error"]
        async with http.post(f"{url}/invoke/{ok}", data=b"x" * 600) as r:
            body = await r.json()
            assert r.status == 502
            assert (
                body["error"]
                == "program wrote more than 512 bytes (exec_max_output); it was stopped"
            )


async def test_logs_plain_and_follow_until_the_container_goes(agent):
    url, directory, store = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, None)
    store.prepare(cid)
    store.note(cid, "first")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{url}/logs/{cid}") as r:
            assert r.status == 200 and "bismuthd:" in await r.text()
        async with http.get(f"{url}/logs/{cid}?follow=true") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            first = await r.content.readuntil(b"\n\n")
            assert first.startswith(b"data: bismuthd:") and b"first" in first
            store.note(cid, "second")
            second = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
            assert b"second" in second
            del directory.containers[cid]
            await asyncio.wait_for(r.content.read(), 5)
            assert r.content.at_eof()
        async with http.get(f"{url}/logs/{uuid.uuid4()}") as r:
            assert r.status == 404


async def test_health_and_metrics(agent):
    url, _, _ = agent
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{url}/healthz") as r:
            assert (await r.json()) == {"ok": True, "containers": 0}
        async with http.get(f"{url}/metrics") as r:
            assert "bismuth_agent_start_seconds" in await r.text()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {AGENT_HEADER: "wrong"},
        {AGENT_HEADER: CREDENTIALS.agent + "x"},
        {AGENT_HEADER: ""},
        {"Authorization": f"Bearer {CREDENTIALS.agent}"},  # only /metrics takes it so
    ],
)
async def test_without_the_credential_only_healthz_answers(agent, container_server, headers):
    url, directory, _ = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, container_server)
    async with aiohttp.ClientSession(headers=headers) as http:
        paths = (f"/invoke/{cid}/x", f"/invoke/{cid}", f"/logs/{cid}", "/logs/x", "/timeline")
        for path in paths:
            async with http.get(url + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "X-Bismuth-Agent-Credential" in (await r.json())["error"]
        async with http.get(f"{url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{url}/metrics") as r:
            assert r.status == (200 if "Authorization" in headers else 401)


async def test_timeline_serves_the_stage_stamps_of_recent_starts(tmp_path):
    timelines = Timelines()
    deps = HttpDeps(
        Directory(),
        LogStore(tmp_path, 1 << 20),
        AgentMetrics.create(),
        CREDENTIALS,
        timelines=timelines,
    )
    runner, url = await serve(create_app(deps))
    cid = uuid.uuid4()
    timelines.begin(cid, committed=1000.0)
    timelines.stamp(cid, "image")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{url}/timeline") as r:
            every = await r.json()
        async with http.get(f"{url}/timeline?container={cid}") as r:
            one = await r.json()
        async with http.get(f"{url}/timeline?container={uuid.uuid4()}") as r:
            assert r.status == 404
            assert "no timeline" in (await r.json())["error"]
        async with http.get(f"{url}/timeline?container=nope") as r:
            assert r.status == 400
    await runner.cleanup()
    assert every == one
    assert list(one[str(cid)]) == ["committed", "seen", "image"]
    assert one[str(cid)]["committed"] == 1000.0


def test_log_cap_keeps_the_newest_half(tmp_path):
    store = LogStore(tmp_path, max_bytes=1000)
    cid = uuid.uuid4()
    store.prepare(cid)
    with open(store.path(cid), "ab") as fh:
        fh.write(b"a" * 600)
    store.enforce_cap(cid)
    assert store.path(cid).stat().st_size == 0
    with open(store.path(cid), "ab") as fh:
        fh.write(b"b" * 10)
    assert store.read(cid) == b"a" * 600 + b"b" * 10
    store.remove(cid)
    assert store.read(cid) == b""


@pytest.fixture
async def hung_server() -> AsyncIterator[tuple[tuple[str, int], list[object]]]:
    """A container that accepts connections and reads requests but never answers."""
    held: list[object] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1 << 16)
        await asyncio.Event().wait()  # until the server is closed

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[:2], held
    server.close()
    for writer in held:
        writer.close()  # type: ignore[attr-defined]


async def test_a_hung_container_is_cut_off_and_holds_at_most_its_connections(
    agent, hung_server, container_server
):
    url, directory, _ = agent
    address, held = hung_server
    hung, fine = uuid.uuid4(), uuid.uuid4()
    directory.containers[hung] = FakeContainer(hung, address)
    directory.containers[fine] = FakeContainer(fine, container_server)
    async with aiohttp.ClientSession(headers=AUTH) as http:

        async def call(cid: uuid.UUID) -> tuple[int, dict[str, str], dict[str, object]]:
            async with http.get(f"{url}/invoke/{cid}/x") as r:
                return r.status, dict(r.headers), await r.json()

        answers = await asyncio.gather(*(call(hung) for _ in range(5)), call(fine))
    *stuck, (fine_status, _, _) = answers
    assert fine_status == 200  # another function is served meanwhile
    statuses = sorted(status for status, _, _ in stuck)
    # 2 connections at once (cut off after 2 s of silence); the other 3 get none within 0.3 s
    assert statuses == [503, 503, 503, 504, 504]
    for status, headers, body in stuck:
        if status == 504:
            assert "sent nothing for 2s (proxy_idle_timeout)" in str(body["error"])
        else:
            assert headers["X-Bismuth-Not-Forwarded"] == "1"
            assert "at most 2 at once" in str(body["error"])
    assert len(held) == 2


async def test_bismuth_headers_from_a_container_are_dropped(agent):
    url, directory, _ = agent

    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            text="hi",
            headers={"X-Bismuth-Not-Forwarded": "1", "X-Bismuth-Container-ID": "forged"},
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner, container_url = await serve(app)
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, ("127.0.0.1", int(container_url.split(":")[-1])))
    try:
        async with (
            aiohttp.ClientSession(headers=AUTH) as http,
            http.get(f"{url}/invoke/{cid}/") as r,
        ):
            assert r.status == 200 and await r.text() == "hi"
            assert "X-Bismuth-Not-Forwarded" not in r.headers
            assert r.headers["X-Bismuth-Container-ID"] == str(cid)
    finally:
        await runner.cleanup()


async def raw_request(url: str, cid: uuid.UUID, declared: int, body: bytes):
    """A POST that declares ``declared`` body bytes but sends only ``body``."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /invoke/{cid} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n"
        f"{AGENT_HEADER}: {CREDENTIALS.agent}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    return reader, writer


async def test_a_run_slot_is_taken_before_the_body_is_read(agent):
    url, directory, _ = agent
    cid = uuid.uuid4()
    busy = FakeContainer(cid, None, hold=asyncio.Event())
    directory.containers[cid] = busy
    async with aiohttp.ClientSession(headers=AUTH) as http:
        first = asyncio.ensure_future(http.post(f"{url}/invoke/{cid}", data=b"a"))
        await eventually(lambda: busy.runs == ["started"], what="the first run started")
        # the only slot is busy: a request whose body never comes is refused, not read
        reader, writer = await raw_request(url, cid, 1000, b"")
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 503 " in status_line
        writer.close()
        busy.hold.set()  # type: ignore[union-attr]
        async with await first as r:
            assert r.status == 200
    # with a free slot, a body that does not arrive in time is a 408
    reader, writer = await raw_request(url, cid, 1000, b"partial")
    assert b" 408 " in await asyncio.wait_for(reader.readline(), 5)
    writer.close()


async def test_a_client_that_leaves_cancels_its_run(agent):
    url, directory, _ = agent
    cid = uuid.uuid4()
    running = FakeContainer(cid, None, hold=asyncio.Event())
    directory.containers[cid] = running
    _, writer = await raw_request(url, cid, 1, b"x")
    await eventually(lambda: running.runs == ["started"], what="the run started")
    writer.close()
    await eventually(lambda: running.runs == ["started", "cancelled"], what="the run cancelled")
