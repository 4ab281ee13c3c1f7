"""Random keys, queries and bodies against a real provider server: never a 5xx, always JSON.

The provider runs in-process on loopback with the ``local`` backend, a small quota and a
real ZooKeeper for secrets (an environment with no secrets in it); the
requests are raw HTTP through aiohttp's client, so odd paths reach the server unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from bismuth_agent import secretserver
from bismuth_agent.secretserver import Asker, SecretSource
from bismuth_core.secrets import SecretBox, generate_cluster_key, load_cluster_key
from bismuth_core.zk import ZooKeeper
from bismuth_provider.app import Limits, ProviderDeps, create_app
from bismuth_provider.secretstore import SecretReader
from bismuth_provider.storage.base import Quotas
from bismuth_provider.storage.local import LocalStorage
from tests.support.clusterkey import ACCESS
from tests.support.zkserver import free_port

TOKEN = secrets.token_urlsafe(32)

keys = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="ab/.\\%\x00\x1f\u200b ", max_size=12),
    st.lists(st.sampled_from(["a", "..", ".", "", "b c", "%2e%2e", "é"]), max_size=5).map("/".join),
    st.integers(min_value=500, max_value=700).map(lambda n: "k" * n),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
areas = st.sampled_from(["/kv/v1/", "/blob/v1/", "/secrets/v1/", "/", "/blob/v1"])
bodies = st.one_of(st.none(), st.binary(max_size=3000))
queries = st.dictionaries(
    st.sampled_from(["prefix", "after", "limit", "x"]), st.text(max_size=8), max_size=3
)


class Server:
    """The provider app on a loopback port, in an event loop of its own."""

    def __init__(self, root: Path, zookeeper: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = root / "providers.sock"
        self.zk = ZooKeeper(zookeeper, "t" + uuid.uuid4().hex[:16], access=ACCESS)
        self.agent = contextlib.AsyncExitStack()
        deps = ProviderDeps(
            token=TOKEN,
            storage=LocalStorage(root, str(uuid.uuid4()), Quotas(kv=2000, blob=5000)),
            secrets=SecretReader(str(self.socket), TOKEN),
            limits=Limits(max_value_bytes=1000, max_blob_bytes=2500),
        )
        self.runner = web.AppRunner(create_app(deps), access_log=None)
        self.loop.run_until_complete(self._start())
        self.session = self.loop.run_until_complete(self._session())

    async def _start(self) -> None:
        """The provider, and an agent's socket that knows this process as its provider."""
        await self.zk.start()
        box = SecretBox(load_cluster_key(generate_cluster_key()))
        asker = Asker(uuid.uuid4(), uuid.uuid4(), TOKEN)
        await self.agent.enter_async_context(
            secretserver.serving(
                self.socket,
                SecretSource(self.zk, box),
                lambda pid: asker if pid == os.getpid() else None,
                None,
            )
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def request(
        self, method: str, path: str, query: dict[str, str], body: bytes | None, token: str
    ) -> tuple[int, str, bytes]:
        async def send() -> tuple[int, str, bytes]:
            url = (
                URL(self.url + path, encoded=True).with_query(query)
                if query
                else URL(self.url + path, encoded=True)
            )
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with self.session.request(method, url, data=body, headers=headers) as resp:
                return resp.status, resp.content_type, await resp.read()

        return self.loop.run_until_complete(send())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.run_until_complete(self.agent.aclose())
        self.loop.run_until_complete(self.zk.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, zk_server) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("provider-data"), zk_server.hosts)
    yield running
    running.close()


def _quote(key: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "/._-~") else _pct(c) for c in key)


def _pct(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=methods, area=areas, key=keys, query=queries, body=bodies)
def test_no_request_gets_a_server_error(server, method, area, key, query, body):
    status, content_type, payload = server.request(method, area + _quote(key), query, body, TOKEN)
    assert status < 500, payload
    if status >= 400 and method != "HEAD":
        assert content_type == "application/json"
        assert "error" in json.loads(payload)


@settings(max_examples=50, deadline=None)
@given(token=st.text(max_size=60).filter(lambda t: t.strip() != TOKEN), key=keys)
def test_any_other_token_is_refused(server, token, key):
    safe = "".join(c for c in token if c.isprintable() and c.isascii())
    status, _, payload = server.request("GET", "/kv/v1/" + _quote(key), {}, None, safe)
    assert status == 401, payload


def test_a_refused_write_leaves_the_stored_value(server):
    assert server.request("POST", "/kv/v1/keep", {}, b"v1", TOKEN)[0] == 204
    status, _, payload = server.request("POST", "/kv/v1/keep", {}, b"x" * 1001, TOKEN)
    assert status == 413 and b"limit" in payload
    assert server.request("GET", "/kv/v1/keep", {}, None, TOKEN)[2] == b"v1"


def test_head_of_a_blob_leaves_a_kept_alive_connection_in_step(server):
    """HEAD answers with a blob's headers only: bytes of its body left on the connection would
    be read as the next response's status line (what the fuzz test once saw)."""
    body = bytes(range(256)) * 4
    assert server.request("PUT", "/blob/v1/head-me", {}, body, TOKEN)[0] in (200, 404)
    server.request("POST", "/blob/v1/head-me", {}, body, TOKEN)
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    requests = (
        f"HEAD /blob/v1/head-me HTTP/1.1\r\nHost: p\r\n{auth}\r\n"
        f"GET /healthz HTTP/1.1\r\nHost: p\r\n{auth}Connection: close\r\n\r\n"
    )

    async def exchange() -> bytes:  # one connection, in the server's loop
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(requests.encode())
        received = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return received

    received = server.loop.run_until_complete(exchange())
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1024" in head
    assert rest.startswith(b"HTTP/1.1 200"), rest[:40]
    assert rest.endswith(b'{"status": "ok"}')
