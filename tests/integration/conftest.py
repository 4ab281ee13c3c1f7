"""Fixtures of the integration suites: an API served on loopback, an operator's HTTP client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bismuth_api.config import ApiConfig
from bismuth_core import tenancy
from bismuth_core.tokens import Scope
from bismuth_core.zk import ZkAccess, ZooKeeper
from bismuth_core.zkwatch import PersistentWatches
from bismuth_ctl.main import main as ctl_main
from tests.support.apiserver import Api, bearer
from tests.support.zkfaults import TcpProxy


@pytest.fixture
async def admin_token(zk: ZooKeeper) -> str:
    """An admin token of the test's environment, as the deploy gives the operator."""
    return (await tenancy.issue_token(zk, None, Scope.ADMIN))[1].text


@pytest.fixture
async def http(admin_token: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that calls the API as the operator: the admin token goes with every request."""
    async with aiohttp.ClientSession(headers=bearer(admin_token)) as session:
        yield session


@pytest.fixture
def api_config(zk_server, zk_env, standins, cluster_key_file) -> ApiConfig:
    """Short grace and leader interval so node loss and rollouts finish quickly in tests."""
    return ApiConfig(
        zookeeper=zk_server.hosts,
        zookeeper_env=zk_env,
        cluster_key_file=cluster_key_file,
        node_loss_grace=1.5,
        leader_interval=0.2,
        agent_port=standins.port,
    )


@pytest.fixture
async def api(api_config: ApiConfig) -> AsyncIterator[Api]:
    server = Api(api_config)
    await server.start()
    yield server
    await server.stop()


@dataclass(frozen=True)
class Run:
    """One ``bismuthctl`` run: exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def ctl(
    zk_server, zk_env, capsys, monkeypatch, tmp_path, cluster_key_file
) -> Callable[..., Awaitable[Run]]:
    """Run ``bismuthctl`` in-process on the test's environment as the operator does on a
    cluster host, with the cluster key (in a thread: stand-ins need this loop free).

    It sees none of this machine's API settings: no user config file, no token, and not
    the operator's token file (a local cluster's); API commands name ``--api`` themselves.
    """
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("BISMUTH_TOKEN_FILE", "")
    for name in ("BISMUTH_TOKEN", "BISMUTH_API", "BISMUTH_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    async def run(*args: str) -> Run:
        capsys.readouterr()
        argv = ["--zookeeper", zk_server.hosts, "--zookeeper-env", zk_env]
        argv += ["--cluster-key-file", cluster_key_file, *args]
        code = await asyncio.to_thread(ctl_main, argv)
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@dataclass
class WatchedSession:
    """A ZooKeeper session through a proxy that can cut it, with persistent watches."""

    client: ZooKeeper
    watches: PersistentWatches
    proxy: TcpProxy


@pytest.fixture
async def watched_session(
    zk_server, zk_env
) -> AsyncIterator[Callable[[ZkAccess], Awaitable[WatchedSession]]]:
    """Open a :class:`WatchedSession` on the test's environment as the given identity."""
    opened: list[WatchedSession] = []

    async def open_session(access: ZkAccess) -> WatchedSession:
        proxy = TcpProxy(zk_server.port)
        client = ZooKeeper(proxy.hosts, zk_env, access=access)
        await client.start()
        opened.append(WatchedSession(client, PersistentWatches(client.client), proxy))
        return opened[-1]

    yield open_session
    for session in opened:
        session.watches.close()
        await session.client.stop()
        session.proxy.close()
