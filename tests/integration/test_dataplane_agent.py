"""The request path with real containers: nginx connects straight to a Server-mode container
(the agent is off that path), so a killed agent fails no request, and a killed replica none
that may be retried. Real ZooKeeper, containerd, runc, agent process and nginx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_core import cluster, layout, operations
from bismuth_core.layout import ContainerStatus
from tests.support.agenthost import httpd
from tests.support.frontend import RequestLoop
from tests.support.tomlconfig import write_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BISMUTHD = str(Path(sys.executable).parent / "bismuthd")


@pytest.fixture
def frontend_agent_port(node) -> int:
    return node.port


class AgentProcess:
    """``bismuthd`` as its service manager runs it, so that it can be killed."""

    def __init__(self, config, directory: Path) -> None:
        self.config_file = write_config(config, directory / "agent.toml")
        self.log_file = directory / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [BISMUTHD, "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("BISMUTH_")},
                start_new_session=True,  # its providers outlive it, as under supervisord
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
async def agent_process(zk, node, tmp_path):
    process = AgentProcess(node, tmp_path)
    process.start()
    try:
        await eventually(
            lambda: zk.exists(layout.alive_path(node.node_ip)), timeout=30, what="agent alive"
        )
        yield process
    finally:
        process.stop()


async def running(zk, fid, count: int) -> list[layout.Backend] | None:
    view = await cluster.read_function(zk, fid)
    got = await cluster.read_statuses(zk, view.backends)
    ok = [b for b in view.backends if got[b] == ContainerStatus.RUNNING]
    return ok if len(ok) == count else None


async def served(http, fe, host: str) -> bool:
    async with http.get(fe.url + "/hostname", headers={"Host": host}) as resp:
        await resp.read()
        return resp.status == 200


async def test_agent_killed_under_load_fails_no_request(
    zk, node, agent_process, start_frontend, http
):
    definition = httpd()
    host = definition.routes[0]
    fe = await start_frontend()
    fid = await operations.create_function(zk, definition)
    (backend,) = await eventually(lambda: running(zk, fid, 1), timeout=60, what="Running")
    await eventually(lambda: served(http, fe, host), what="served")
    route = fe.deps.cache.table.routes[host]
    assert backend in route.endpoints  # nginx connects to the container itself
    async with ContainerdClient(node.containerd_address, node.containerd_namespace) as ctrd:
        task = await ctrd.tasks.get(str(backend.container_id))
        loop = RequestLoop(http, fe.url + "/hostname", host)
        await loop.grow(100)
        agent_process.kill()
        await loop.grow(500)  # served while no agent runs
        agent_process.start()

        async def adopted() -> bool:
            async with (
                aiohttp.ClientSession() as client,
                client.get(f"http://{node.node_ip}:{node.port}/healthz") as resp,
            ):
                return resp.status == 200 and (await resp.json())["containers"] == {"Running": 1}

        await eventually(adopted, timeout=60, what="the new agent adopted the container")
        await loop.grow(300)
        outcomes = await loop.stop()
        assert (await ctrd.tasks.get(str(backend.container_id))).pid == task.pid  # same process
    assert set(outcomes) == {200}, outcomes
    assert set(loop.served_by) == {str(backend.container_id)}


async def test_killed_replica_fails_no_request_it_had_not_answered(
    zk, node, agent_process, start_frontend, http
):
    definition = httpd(max_instances=2)
    host = definition.routes[0]
    fe = await start_frontend()
    fid = await operations.create_function(zk, definition)
    backends = await eventually(lambda: running(zk, fid, 2), timeout=60, what="both Running")
    await eventually(
        lambda: len(fe.deps.cache.table.routes[host].endpoints) == 2, what="both routed"
    )
    loop = RequestLoop(http, fe.url + "/hostname", host)
    await loop.grow(200)
    victim = backends[0]
    async with ContainerdClient(node.containerd_address, node.containerd_namespace) as ctrd:
        await ctrd.tasks.kill(str(victim.container_id), signal.SIGKILL)
        # the agent sees it exit, marks it Failed and starts it again after its backoff
        await eventually(
            lambda: running(zk, fid, 1), timeout=30, what="the killed replica not Running"
        )
        await loop.grow(300)
        await eventually(lambda: running(zk, fid, 2), timeout=60, what="restarted")
        await loop.grow(200)
    outcomes = await loop.stop()
    # No request failed that had not started to be answered: refused and reset connections
    # went to the other replica. Only an answer the victim was writing at the moment it was
    # killed can be cut (at most one per client in flight): no proxy can finish that one.
    cut = outcomes.pop("ClientPayloadError", 0)
    assert set(outcomes) == {200}, (outcomes, loop.failures[:3])
    assert cut <= 4, cut
    assert len([c for c in loop.served_by if c]) == 2
