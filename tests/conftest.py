"""Fixtures shared by every suite: a real ZooKeeper, per-test chroots, stand-in agents."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bismuth_core import operations
from bismuth_core.zk import ZooKeeper
from tests.support.clusterkey import ACCESS, write_key_files
from tests.support.standin import StandInAgent
from tests.support.zkfaults import InterleavedSession
from tests.support.zkserver import ZooKeeperServer, free_port

# fixtures of a private containerd and of in-process agents, for every suite
pytest_plugins = [
    "tests.support.containerd",
    "tests.support.agenthost",
    "tests.support.s3server",
    "tests.support.gitserver",
    "tests.support.frontend",
]

_SUBNETS = itertools.count(1)


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The session's cluster key file and frontend key file, as the deploy writes them."""
    return write_key_files(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def cluster_key_file(key_files: tuple[Path, Path]) -> str:
    return str(key_files[0])


@pytest.fixture(scope="session")
def frontend_key_file(key_files: tuple[Path, Path]) -> str:
    return str(key_files[1])


@pytest.fixture
def zk_env() -> str:
    """A fresh environment (ZooKeeper chroot) for one test."""
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
async def zk(zk_server: ZooKeeperServer, zk_env: str) -> AsyncIterator[ZooKeeper]:
    client = ZooKeeper(zk_server.hosts, zk_env, access=ACCESS)
    await client.start()
    await operations.bootstrap(client)
    yield client
    await client.stop()


@pytest.fixture
async def interleaved(
    zk_server: ZooKeeperServer, zk_env: str, zk: ZooKeeper
) -> AsyncIterator[InterleavedSession]:
    """A second session of the test's environment whose next multi-op waits for ``before``."""
    session = InterleavedSession(zk_server.hosts, zk_env, access=ACCESS)
    await session.start()
    yield session
    await session.stop()


class StandIns:
    """Starts stand-in agents on distinct loopback addresses sharing one agent port."""

    def __init__(self, hosts: str, env: str, zk: ZooKeeper) -> None:
        self.hosts, self.env, self.zk = hosts, env, zk
        self.port = free_port()
        self.subnet = next(_SUBNETS)
        self.agents: list[StandInAgent] = []

    async def add(self, **kwargs: object) -> StandInAgent:
        ip = f"127.0.{self.subnet}.{len(self.agents) + 10}"
        await operations.provision(self.zk, ip)
        agent = StandInAgent(self.hosts, self.env, ip, self.port, **kwargs)  # type: ignore[arg-type]
        await agent.start()
        self.agents.append(agent)
        return agent

    async def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                await agent.stop()


@pytest.fixture
async def standins(
    zk_server: ZooKeeperServer, zk_env: str, zk: ZooKeeper
) -> AsyncIterator[StandIns]:
    group = StandIns(zk_server.hosts, zk_env, zk)
    yield group
    await group.close()
