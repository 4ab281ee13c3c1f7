"""Fixtures of the integration suites: an API served on loopback, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bismuth_api.config import ApiConfig
from tests.support.apiserver import Api


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def api_config(zk_server, zk_env, standins) -> ApiConfig:
    """Short grace and leader interval so node loss and rollouts finish quickly in tests."""
    return ApiConfig(
        zookeeper=zk_server.hosts,
        zookeeper_env=zk_env,
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
