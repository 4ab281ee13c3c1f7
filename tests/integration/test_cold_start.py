"""Cold starts and updates as a user sees them, with real containers.

A real agent (in-process, busybox image, its containerd and runc), the API and the frontend
on loopback. A new container's start is stamped at every stage (agent ``/timeline``,
frontend ``/timeline``); an update (``PUT``) under a request loop loses no request, and its
old container is gone soon after the new one serves (stopped by SIGTERM: these agents wait
60 s before SIGKILL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from bismuth_agent.containerd.errors import NotFound
from bismuth_agent.timeline import COMMITTED, LISTENING, RUNNING, STAGES, STARTED
from bismuth_api.config import ApiConfig
from bismuth_core import cluster
from bismuth_core.layout import Backend, ContainerStatus
from tests.support.agenthost import start_agent
from tests.support.apiserver import Api, bearer
from tests.support.clusterkey import AGENT_AUTH
from tests.support.frontend import FrontendUnderTest as Frontend
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

GRACE = 60.0
HTTPD = ["/bin/httpd", "-f", "-p", "8080", "-h", "/etc"]  # ends at SIGTERM (no handler)


def function(host: str) -> dict[str, object]:
    return {
        "image": "bismuth.test/busybox:1",
        "cpu": 0.25,
        "memory": 64 << 20,
        "invoke_mode": {"Server": [HTTPD, 8080]},
        "max_instances": 1,
        "routes": [{"hostname": host}],
    }


@pytest.fixture
async def agent(node):
    running = await start_agent(replace(node, stop_grace=GRACE))
    yield running
    await running.stop()


@pytest.fixture
async def api(zk_server, zk_env, cluster_key_file, agent) -> AsyncIterator[Api]:
    config = ApiConfig(
        zookeeper=zk_server.hosts,
        zookeeper_env=zk_env,
        cluster_key_file=cluster_key_file,
        agent_port=agent.config.port,
    )
    server = Api(config)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def frontend_agent_port(node) -> int:
    return node.port


@pytest.fixture
async def frontend(agent, start_frontend) -> Frontend:
    return await start_frontend()


@pytest.fixture
async def http(api) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=bearer(api.admin_token)) as session:
        yield session


async def call(http, fe: Frontend, host: str) -> tuple[int, str | None]:
    async with http.get(fe.url + "/passwd", headers={"Host": host}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Bismuth-Container-ID")


async def create(http, api: Api, host: str) -> str:
    async with http.post(f"{api.url}/function", json=function(host)) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"])


async def served_by(http, fe: Frontend, host: str) -> str | None:
    status, cid = await call(http, fe, host)
    return cid if status == 200 else None


async def test_a_cold_start_is_stamped_at_every_stage(zk, agent, api, frontend, http):
    host = f"f{uuid.uuid4().hex[:8]}.test"
    await create(http, api, host)
    cid = await eventually(lambda: served_by(http, frontend, host), timeout=30, what="a 200")

    async with (
        aiohttp.ClientSession(headers=AGENT_AUTH) as agent_http,
        agent_http.get(f"{agent.url}/timeline?container={cid}") as resp,
    ):
        line = (await resp.json())[cid]
    assert set(line) == set(STAGES)
    assert min(line, key=line.__getitem__) == COMMITTED
    assert max(line, key=line.__getitem__) == RUNNING
    assert line[STARTED] <= line[LISTENING]
    async with http.get(f"{frontend.admin_url}/timeline") as resp:
        routed = (await resp.json())[cid]["routed"]
    assert routed >= line[RUNNING]


class RequestLoop:
    """Clients calling the frontend back to back until stopped; counts every outcome."""

    def __init__(self, http, fe: Frontend, host: str, workers: int = 4) -> None:
        self.http, self.fe, self.host = http, fe, host
        self.outcomes: Counter[int | str] = Counter()
        self.served_by: Counter[str] = Counter()
        self.first_served: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(workers)]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                status, cid = await call(self.http, self.fe, self.host)
            except aiohttp.ClientError as exc:
                self.outcomes[type(exc).__name__] += 1
                continue
            self.outcomes[status] += 1
            if cid and status == 200:
                self.served_by[cid] += 1
                self.first_served.setdefault(cid, loop.time())

    async def stop(self) -> Counter[int | str]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes


async def backends(zk, fid: str) -> tuple[Backend, ...]:
    return (await cluster.read_function(zk, uuid.UUID(fid))).backends


async def task_gone(agent, backend: Backend) -> bool:
    try:
        await agent.ctrd.tasks.get(str(backend.container_id))
    except NotFound:
        return True
    return False


async def test_an_update_loses_no_request_and_stops_the_old_container_at_sigterm(
    zk, agent, api, frontend, http
):
    host = f"f{uuid.uuid4().hex[:8]}.test"
    fid = await create(http, api, host)
    await eventually(lambda: served_by(http, frontend, host), timeout=30, what="a 200")
    (old,) = await backends(zk, fid)
    calls = RequestLoop(http, frontend, host)
    await eventually(lambda: calls.served_by, timeout=10, what="the loop served")

    async with http.put(f"{api.url}/function/{fid}") as resp:  # redeploy: new containers
        assert resp.status == 200, await resp.text()
    new = str(await eventually(lambda: new_backend(zk, fid, old), timeout=10, what="new one"))
    await eventually(lambda: new in calls.first_served, timeout=30, what="the new one serving")
    await eventually(lambda: task_gone(agent, old), timeout=GRACE / 3, what="old task gone")
    outcomes = await calls.stop()

    assert set(outcomes) == {200}, outcomes
    assert set(calls.served_by) == {str(old.container_id), new}
    view = await cluster.read_function(zk, uuid.UUID(fid))
    assert [b.container_id for b in view.backends] == [uuid.UUID(new)]
    statuses = await cluster.read_statuses(zk, view.backends)
    assert list(statuses.values()) == [ContainerStatus.RUNNING]


async def new_backend(zk, fid: str, old: Backend) -> uuid.UUID | None:
    found = [b.container_id for b in await backends(zk, fid) if b != old]
    return found[0] if found else None
