"""bismuthd's HTTP server on loopback, with a loopback HTTP server playing a container."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from bismuth_agent.http import AgentMetrics, ExecResult, ExecTimeout, HttpDeps, create_app
from bismuth_agent.logstore import LogStore
from tests.support.zkserver import free_port


@dataclass
class FakeContainer:
    container_id: uuid.UUID
    address: tuple[str, int] | None
    running: bool = True
    exit_code: int = 0
    slow: bool = False

    def serving(self) -> bool:
        return self.running

    def server_address(self) -> tuple[str, int] | None:
        return self.address

    async def execute(self, stdin: bytes, timeout: float) -> ExecResult:
        if self.slow:
            raise ExecTimeout()
        return ExecResult(self.exit_code, stdin.upper(), b"oops" if self.exit_code else b"")


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
            },
            headers={"X-From": "container"},
        )

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner, url = await serve(app)
    yield ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    await runner.cleanup()


@pytest.fixture
async def agent(tmp_path) -> AsyncIterator[tuple[str, Directory, LogStore]]:
    directory = Directory()
    store = LogStore(tmp_path / "logs", max_bytes=1 << 20)
    runner, url = await serve(
        create_app(
            HttpDeps(directory, store, AgentMetrics.create(), exec_timeout=1.0, max_exec_body=1024)
        )
    )
    yield url, directory, store
    await runner.cleanup()


async def test_server_mode_is_proxied_with_path_query_and_container_id(agent, container_server):
    url, directory, _ = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, container_server)
    async with (
        aiohttp.ClientSession() as http,
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
    assert body == {"path": "/a/b", "query": "x=1", "len": 5000, "connection_header": None}


async def test_unknown_or_not_running_is_503_not_forwarded(agent, container_server):
    url, directory, _ = agent
    stopped = uuid.uuid4()
    directory.containers[stopped] = FakeContainer(stopped, container_server, running=False)
    async with aiohttp.ClientSession() as http:
        for cid in (uuid.uuid4(), stopped, "not-a-uuid"):
            async with http.get(f"{url}/invoke/{cid}/") as r:
                assert r.status == 503
                assert r.headers["X-Bismuth-Not-Forwarded"] == "1"
                assert "error" in await r.json()


async def test_server_that_does_not_answer_is_502(agent):
    url, directory, _ = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, ("127.0.0.1", free_port()))
    async with aiohttp.ClientSession() as http, http.get(f"{url}/invoke/{cid}") as r:
        assert r.status == 502 and str(cid) in (await r.json())["error"]


async def test_executable_mode(agent):
    url, directory, _ = agent
    ok, failing, slow = (uuid.uuid4() for _ in range(3))
    directory.containers[ok] = FakeContainer(ok, None)
    directory.containers[failing] = FakeContainer(failing, None, exit_code=3)
    directory.containers[slow] = FakeContainer(slow, None, slow=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/invoke/{ok}", data=b"hello") as r:
            assert r.status == 200 and await r.read() == b"HELLO"
            assert r.headers["X-Bismuth-Exit-Code"] == "0"
        async with http.post(f"{url}/invoke/{failing}", data=b"x") as r:
            body = await r.json()
            assert r.status == 502 and "status 3" in body["error"] and body["stderr"] == "oops"
        async with http.post(f"{url}/invoke/{slow}", data=b"x") as r:
            assert r.status == 504
        async with http.post(f"{url}/invoke/{ok}", data=b"x" * 2048) as r:
            assert r.status == 413


async def test_logs_plain_and_follow_until_the_container_goes(agent):
    url, directory, store = agent
    cid = uuid.uuid4()
    directory.containers[cid] = FakeContainer(cid, None)
    store.prepare(cid)
    store.note(cid, "first")
    async with aiohttp.ClientSession() as http:
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
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as r:
            assert (await r.json()) == {"ok": True, "containers": 0}
        async with http.get(f"{url}/metrics") as r:
            assert "bismuth_agent_start_seconds" in await r.text()


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
