"""bismuthd with a real ZooKeeper, a private containerd, runc and real network namespaces.

Each test runs an agent in-process for a node named after a loopback address of its own,
with its own containerd namespace, cgroup parent, subnet pool and nftables table; functions
are scheduled through bismuth_core.operations exactly as the API does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bismuth_agent.agent import Agent
from bismuth_agent.config import AgentConfig
from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.oci import import_oci_archive
from bismuth_agent.http import AgentMetrics, HttpDeps, create_app
from bismuth_agent.logstore import LogStore
from bismuth_agent.main import network_settings
from bismuth_agent.network import Firewall, NetworkAdapter
from bismuth_agent.presence import NodePresence
from bismuth_agent.runtime import ContainerRuntime
from bismuth_core import cluster, layout, operations
from bismuth_core.definition import parse_definition
from bismuth_core.layout import ContainerStatus, NodeAlive
from bismuth_core.zk import ZooKeeper
from tests.support.containerd import (  # noqa: F401 - fixtures
    busybox_image,
    containerd_server,
)
from tests.support.waiting import eventually
from tests.support.zkserver import free_port

pytestmark = pytest.mark.integration

_NODES = itertools.count(1)


def httpd(**changes: object):
    raw = {
        "image": "bismuth.test/busybox:1",
        "cpu": 0.25,
        "memory": 64 << 20,
        "invoke_mode": {"Server": [["/bin/httpd", "-f", "-p", "8080", "-h", "/etc"], 8080]},
        "max_instances": 1,
        "routes": [{"hostname": f"f{uuid.uuid4().hex[:8]}.test"}],
    }
    raw.update(changes)
    return parse_definition(raw)


@dataclass
class RunningAgent:
    config: AgentConfig
    agent: Agent
    runner: web.AppRunner
    zk: ZooKeeper
    ctrd: ContainerdClient

    @property
    def url(self) -> str:
        return f"http://{self.config.node_ip}:{self.config.port}"

    async def stop(self) -> None:
        await self.agent.stop()
        await self.runner.cleanup()
        await self.zk.stop()
        await self.ctrd.close()


async def start_agent(config: AgentConfig) -> RunningAgent:
    zk = ZooKeeper(config.zookeeper, config.zookeeper_env, session_timeout=4.0)
    await zk.start()
    ctrd = ContainerdClient(config.containerd_address, config.containerd_namespace)
    settings = network_settings(config)
    logs = LogStore(config.log_dir, config.log_max_bytes)
    runtime = ContainerRuntime(config, ctrd, NetworkAdapter(settings), Firewall(settings), logs)
    wake = asyncio.Event()
    presence = NodePresence(zk, config.node_ip, NodeAlive(4.0, 4 << 30, "test"), wake.set)
    metrics = AgentMetrics.create()
    agent = Agent(config, ctrd, runtime, presence, logs, metrics, wake)
    runner = web.AppRunner(
        create_app(HttpDeps(agent, logs, metrics, refresh_metrics=agent.refresh_metrics)),
        access_log=None,
    )
    await runner.setup()
    await web.TCPSite(runner, config.node_ip, config.port).start()
    await agent.start()
    return RunningAgent(config, agent, runner, zk, ctrd)


@pytest.fixture
async def node(zk_server, zk_env, zk, containerd_server, busybox_image, tmp_path):  # noqa: F811
    """Config of one node whose namespace already holds the busybox image."""
    n = next(_NODES)
    ip = f"127.0.{100 + n % 100}.{10 + os.getpid() % 200}"
    namespace = f"a{uuid.uuid4().hex[:10]}"
    config = AgentConfig(
        zookeeper=zk_server.hosts,
        zookeeper_env=zk_env,
        bind=ip,
        port=free_port(),
        containerd_address=containerd_server.address,
        containerd_namespace=namespace,
        state_dir=str(tmp_path / "state"),
        log_dir=str(tmp_path / "logs"),
        cgroup_parent=f"{containerd_server.cgroup_parent}/{namespace}",
        network_pool=f"10.{200 + n % 50}.{os.getpid() % 250}.0/24",
        start_timeout=10.0,
        stop_grace=2.0,
        restart_backoff=0.2,
        restart_backoff_cap=1.0,
    )
    await operations.provision(zk, ip)
    async with ContainerdClient(config.containerd_address, namespace) as client:
        await client.ensure_namespace()
        await import_oci_archive(client, busybox_image.path)
    yield config
    async with ContainerdClient(config.containerd_address, namespace) as client:
        from tests.support.containerd import sweep

        await sweep(client)
    settings = network_settings(config)
    await Firewall(settings).remove_all()


@pytest.fixture
async def agent(node) -> AsyncIterator[RunningAgent]:
    running = await start_agent(node)
    yield running
    await running.stop()


async def statuses(zk, fid) -> list[ContainerStatus | None]:
    view = await cluster.read_function(zk, fid)
    got = await cluster.read_statuses(zk, view.backends)
    return [got[b] for b in view.backends]


async def running_backend(zk, fid) -> layout.Backend | None:
    view = await cluster.read_function(zk, fid)
    got = await cluster.read_statuses(zk, view.backends)
    ok = [b for b in view.backends if got[b] == ContainerStatus.RUNNING]
    return ok[0] if ok else None


async def get(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_server_function_runs_and_is_invoked(zk, agent):
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    status, body, headers = await get(f"{agent.url}/invoke/{backend.container_id}/hello")
    assert status == 200 and body == "hello from layer 2\n"
    assert headers["X-Bismuth-Container-ID"] == str(backend.container_id)
    alive = NodeAlive.decode((await zk.get(layout.alive_path(agent.config.node_ip)))[0])
    assert alive.containers == 1
    # what runs inside: its own hostname, uid 1000 mapped onto the unprivileged range
    task = await agent.ctrd.tasks.get(str(backend.container_id))
    uid_map = Path(f"/proc/{task.pid}/uid_map").read_text().split()
    assert uid_map[:2] == ["0", str(agent.config.id_map_start)]
    host_uid = os.stat(f"/proc/{task.pid}").st_uid
    assert host_uid == agent.config.id_map_start + 1000


async def test_killed_task_is_failed_within_a_second_then_running_again(zk, agent):
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    task = await agent.ctrd.tasks.get(str(backend.container_id))
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    os.kill(task.pid, signal.SIGKILL)

    async def failed():
        return (await statuses(zk, fid)) == [ContainerStatus.FAILED]

    await eventually(failed, timeout=5, interval=0.02, what="Failed")
    assert loop.time() - killed_at < 1.0
    await eventually(lambda: running_backend(zk, fid), timeout=20, what="Running again")
    again = await agent.ctrd.tasks.get(str(backend.container_id))
    assert again.pid != task.pid
    status, body, _ = await get(f"{agent.url}/logs/{backend.container_id}")
    assert status == 200 and "exited with status" in body


async def test_executable_function_runs_per_request(zk, agent):
    fid = await operations.create_function(
        zk, httpd(invoke_mode={"Executable": ["/bin/busybox", "tr", "a-z", "A-Z"]})
    )
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{agent.url}/invoke/{backend.container_id}", data=b"shout") as resp,
    ):
        assert resp.status == 200 and await resp.read() == b"SHOUT"


async def test_agent_restart_adopts_running_containers(zk, node):
    first = await start_agent(node)
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    before = (await first.ctrd.tasks.get(str(backend.container_id))).pid
    await first.stop()
    second = await start_agent(node)
    try:

        async def serving():
            status, _body, _ = await get(f"{second.url}/invoke/{backend.container_id}/hello")
            return status == 200

        await eventually(serving, timeout=20, what="served by the new agent")
        after = (await second.ctrd.tasks.get(str(backend.container_id))).pid
        assert after == before
        links = await second.agent.runtime.network.list()
        assert len([i for i in links if i.container_id == str(backend.container_id)]) == 1
    finally:
        await second.stop()


async def test_delete_leaves_nothing_behind(zk, agent):
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    cid = str(backend.container_id)
    await operations.delete_function(zk, fid)

    async def gone():
        containers = await agent.ctrd.containers.list()
        tasks = await agent.ctrd.tasks.list()
        links = await agent.agent.runtime.network.list()
        attached = await agent.agent.runtime.firewall.attached()
        return not containers and not tasks and not links and not attached

    await eventually(gone, timeout=20, what="container, task, veth and rules removed")
    snapshots = await agent.ctrd.snapshots.list()
    assert all(s.name != cid for s in snapshots)


async def test_image_that_does_not_exist_is_failed_with_a_reason(zk, agent):
    fid = await operations.create_function(zk, httpd(image="bismuth.test/missing:1"))

    async def failed():
        return (await statuses(zk, fid)) == [ContainerStatus.FAILED]

    await eventually(failed, timeout=20, what="Failed")
    (backend,) = (await cluster.read_function(zk, fid)).backends
    _status, body, _ = await get(f"{agent.url}/logs/{backend.container_id}")
    assert "bismuth.test/missing:1" in body
    assert await agent.ctrd.containers.list() == []


async def test_invoke_json_for_unknown_container(agent):
    status, body, headers = await get(f"{agent.url}/invoke/{uuid.uuid4()}/")
    assert status == 503 and headers["X-Bismuth-Not-Forwarded"] == "1"
    assert json.loads(body)["error"]
