"""An agent for tests: started in-process for a node of its own on a loopback address.

Each node has its own containerd namespace (in the session's private containerd), cgroup
parent, subnet pool and nftables table, and its namespace holds the busybox test image.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bismuth_agent.config import AgentConfig
from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.oci import import_oci_archive
from bismuth_agent.network import Firewall
from bismuth_agent.providers import recorded_pid
from bismuth_agent.service import AgentService, network_settings
from bismuth_core import cluster, layout, operations
from bismuth_core.definition import parse_definition
from bismuth_core.layout import ContainerStatus
from tests.support.clusterkey import AGENT_AUTH
from tests.support.containerd import sweep
from tests.support.waiting import eventually
from tests.support.zkserver import free_port

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


async def start_agent(config: AgentConfig) -> AgentService:
    """The agent of ``config``'s node, in-process; a short ZooKeeper session, so a stopped
    agent's node is seen gone soon."""
    service = AgentService(config, session_timeout=4.0)
    await service.start()
    return service


@pytest.fixture
async def node(zk_server, zk_env, zk, containerd_server, busybox_image, tmp_path, cluster_key_file):
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
        state_dir=str(containerd_server.shared / namespace),
        log_dir=str(tmp_path / "logs"),
        cgroup_parent=f"{containerd_server.cgroup_parent}/{namespace}",
        cpus=4.0,  # what the node offers the scheduler, whatever this machine has
        memory=4 << 30,
        network_pool=f"10.{200 + n % 50}.{os.getpid() % 250}.0/24",
        start_timeout=10.0,
        stop_grace=2.0,
        restart_backoff=0.2,
        restart_backoff_cap=1.0,
        cluster_key_file=cluster_key_file,
    )
    await operations.provision(zk, ip)
    async with ContainerdClient(config.containerd_address, namespace) as client:
        await client.ensure_namespace()
        await import_oci_archive(client, busybox_image.path)
    yield config
    async with ContainerdClient(config.containerd_address, namespace) as client:
        await sweep(client)
    end_providers(Path(config.state_dir))
    unmount_under(Path(config.state_dir))
    shutil.rmtree(config.state_dir, ignore_errors=True)
    settings = network_settings(config)
    await Firewall(settings).remove_all()


@pytest.fixture
async def pynode(node, python_image):
    """A node whose namespace also holds the toolkit's Python base image."""
    async with ContainerdClient(node.containerd_address, node.containerd_namespace) as client:
        await import_oci_archive(client, python_image)
    return node


def unmount_under(top: Path) -> None:
    """Unmount what an agent left mounted under ``top`` (repo tmpfs of killed tests)."""
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(f"{top}/"):
            subprocess.run(["umount", point], check=False)


def end_providers(state_dir: Path) -> None:
    """Kill the providers the test's agents started (by the PIDs they recorded)."""
    for pid_file in state_dir.glob("containers/*/provider.pid"):
        pid = recorded_pid(pid_file.parent)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def agent(node) -> AsyncIterator[AgentService]:
    running = await start_agent(node)
    yield running
    await running.stop()


def config_toml(config: AgentConfig) -> str:
    """``config`` as the TOML file ``bismuthd --config`` reads."""
    lines = []
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = json.dumps(list(value))
        else:
            text = json.dumps(value)
        lines.append(f"{item.name} = {text}")
    return "\n".join(lines) + "\n"


class AgentProcess:
    """``bismuthd`` as its own process (``python -m bismuth_agent.main``), signalled by PID."""

    def __init__(self, config: AgentConfig, directory: Path) -> None:
        self.config = config
        self.file = directory / "agent.toml"
        self.file.write_text(config_toml(config))
        self.log = directory / "bismuthd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.node_ip}:{self.config.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, zk) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bismuth_agent.main", "--config", str(self.file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        alive = layout.alive_path(self.config.node_ip)
        await eventually(lambda: zk.exists(alive), timeout=30, what="the agent process alive")

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


async def statuses(zk, fid) -> list[ContainerStatus | None]:
    view = await cluster.read_function(zk, fid)
    got = await cluster.read_statuses(zk, view.backends)
    return [got[b] for b in view.backends]


async def running_backend(zk, fid) -> layout.Backend | None:
    view = await cluster.read_function(zk, fid)
    got = await cluster.read_statuses(zk, view.backends)
    ok = [b for b in view.backends if got[b] == ContainerStatus.RUNNING]
    return ok[0] if ok else None


SHELL = {"Executable": ["/bin/sh"]}  # runs the request body as a script


async def run_in(agent: AgentService, backend: layout.Backend, script: str) -> tuple[int, str]:
    """Run ``script`` in a ``SHELL`` container through the agent's /invoke."""
    async with (
        aiohttp.ClientSession(headers=AGENT_AUTH) as http,
        http.post(f"{agent.url}/invoke/{backend.container_id}", data=script.encode()) as resp,
    ):
        return resp.status, (await resp.read()).decode(errors="replace")


async def shell_container(zk, agent: AgentService, **changes: object) -> layout.Backend:
    """A Running ``SHELL`` container of a new function (``changes`` to its definition)."""
    fid = await operations.create_function(zk, httpd(invoke_mode=SHELL, **changes))
    return await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")


async def get(url: str) -> tuple[int, str, dict[str, str]]:
    """GET as the cluster's frontends and API do: with the agent credential."""
    async with aiohttp.ClientSession(headers=AGENT_AUTH) as http, http.get(url) as resp:
        return resp.status, await resp.text(), dict(resp.headers)
