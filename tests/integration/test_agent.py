"""bismuthd with a real ZooKeeper, a private containerd, runc and real network namespaces.

Each test runs an agent in-process for a node named after a loopback address of its own,
with its own containerd namespace, cgroup parent, subnet pool and nftables table; functions
are scheduled through bismuth_core.operations exactly as the API does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from bismuth_agent.namespaces import PreparedNamespaces
from bismuth_agent.network import Firewall, NetworkAdapter
from bismuth_agent.providers import recorded_pid
from bismuth_agent.service import network_settings
from bismuth_agent.spec import IdMapping
from bismuth_core import cluster, layout, operations
from bismuth_core.layout import ContainerStatus, NodeAlive
from tests.support.agenthost import (
    SHELL,
    get,
    httpd,
    run_in,
    running_backend,
    start_agent,
    statuses,
)
from tests.support.clusterkey import AGENT_AUTH
from tests.support.waiting import eventually
from tests.support.zkfaults import expire_session

pytestmark = pytest.mark.integration


async def test_new_containers_wake_the_agent_not_its_periodic_pass(
    zk, zk_server, agent, monkeypatch
):
    """The agent learns of a container from ZooKeeper's watch: with the periodic pass an
    hour away, containers still start, before and after its session expires."""
    monkeypatch.setattr("bismuth_agent.agent.PASS_INTERVAL", 3600.0)
    agent.agent.wake.set()  # the loop's next wait is the hour-long one
    first = await operations.create_function(zk, httpd())
    await eventually(lambda: running_backend(zk, first), timeout=30, what="Running")
    session = agent.zk.client.client_id
    await asyncio.to_thread(expire_session, agent.zk.client, zk_server.hosts)
    await eventually(
        lambda: agent.zk.connected and agent.zk.client.client_id != session,
        timeout=30,
        what="a new session",
    )
    second = await operations.create_function(zk, httpd())
    await eventually(lambda: running_backend(zk, second), timeout=30, what="Running")


async def test_server_function_runs_and_is_invoked(zk, agent):
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    status, body, headers = await get(f"{agent.url}/invoke/{backend.container_id}/hello")
    assert status == 200 and body == "hello from layer 2\n"
    # its rootfs, made under a lease before the record referenced it, is held by the record
    lease = f"bismuth-rootfs-{backend.container_id}"

    async def let_go() -> bool:
        return lease not in await agent.ctrd.list_leases()

    await eventually(let_go, what="the rootfs lease deleted")
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
        aiohttp.ClientSession(headers=AGENT_AUTH) as http,
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
        links = await second.runtime.network.list()
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
        links = await agent.runtime.network.list()
        attached = await agent.runtime.firewall.attached()
        return not containers and not tasks and not links and not attached

    await eventually(gone, timeout=20, what="container, task, veth and rules removed")
    snapshots = await agent.ctrd.snapshots.list()
    assert all(s.name != cid for s in snapshots)


def namespace_files(config) -> list[str]:
    """Containers whose user and network namespaces the node's agent keeps."""
    top = PreparedNamespaces.of_agent(config.state_dir).top
    return sorted(p.name for p in top.iterdir()) if top.is_dir() else []


async def test_task_joins_the_namespaces_the_agent_made(zk, agent):
    """The agent makes a container's user and network namespaces (and wires the network)
    while the task is being made; runc joins them: the task's namespaces are the files the
    agent keeps, the container's sysfs shows its own interfaces only, its address is not
    its to change, and deleting it lets go of the files."""
    fid = await operations.create_function(zk, httpd(invoke_mode=SHELL))
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    cid = str(backend.container_id)
    files = agent.runtime.namespaces.files(cid)
    pid = (await agent.ctrd.tasks.get(cid)).pid
    for kind, path in (("user", files.user), ("net", files.network)):
        assert os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(path).st_ino
    status, out = await run_in(agent, backend, "ls /sys/class/net")
    assert status == 200 and out.split() == ["eth0", "lo"], out
    status, out = await run_in(agent, backend, "ip addr add 10.1.2.3/32 dev eth0 2>&1; echo $?")
    assert status == 200 and out.split()[-1] != "0", out
    assert namespace_files(agent.config) == [cid]
    await operations.delete_function(zk, fid)

    async def let_go() -> bool:
        return not namespace_files(agent.config) and not await agent.ctrd.tasks.list()

    await eventually(let_go, timeout=20, what="namespace files removed")


async def test_image_that_does_not_exist_is_failed_with_a_reason(zk, agent):
    fid = await operations.create_function(zk, httpd(image="bismuth.test/missing:1"))

    async def failed():
        return (await statuses(zk, fid)) == [ContainerStatus.FAILED]

    await eventually(failed, timeout=20, what="Failed")
    (backend,) = (await cluster.read_function(zk, fid)).backends
    _status, body, _ = await get(f"{agent.url}/logs/{backend.container_id}")
    assert "bismuth.test/missing:1" in body
    assert await agent.ctrd.containers.list() == []
    directory = Path(agent.config.state_dir) / "containers" / str(backend.container_id)

    async def clean() -> bool:  # between two attempts of the restart backoff
        links = await agent.runtime.network.list()
        reserved = agent.runtime.network.allocations.allocations()
        namespaces = namespace_files(agent.config)
        return not links and not reserved and not namespaces and recorded_pid(directory) is None

    await eventually(clean, timeout=20, what="no provider, subnet, veth or namespace left")


async def test_invoke_json_for_unknown_container(agent):
    status, body, headers = await get(f"{agent.url}/invoke/{uuid.uuid4()}/")
    assert status == 503 and headers["X-Bismuth-Not-Forwarded"] == "1"
    assert json.loads(body)["error"]


async def test_command_that_exits_at_once_is_failed_and_retried(zk, agent):
    fid = await operations.create_function(
        zk, httpd(invoke_mode={"Server": [["/bin/false"], 8080]})
    )
    (backend,) = (await cluster.read_function(zk, fid)).backends

    async def noted_twice():
        _, body, _ = await get(f"{agent.url}/logs/{backend.container_id}")
        return body.count("exited with status 1") >= 2  # failed, restarted, failed again

    await eventually(noted_twice, timeout=20, what="two failed starts in the log")
    assert await statuses(zk, fid) in ([ContainerStatus.FAILED], [ContainerStatus.STARTING])


async def test_entrypoint_that_never_listens_is_failed_and_removed(zk, node):
    running = await start_agent(dataclasses.replace(node, start_timeout=1.5, restart_backoff=30.0))
    try:
        fid = await operations.create_function(
            zk, httpd(invoke_mode={"Server": [["/bin/sleep", "3600"], 8080]})
        )
        (backend,) = (await cluster.read_function(zk, fid)).backends

        async def failed():
            return (await statuses(zk, fid)) == [ContainerStatus.FAILED]

        await eventually(failed, timeout=20, what="Failed")
        _, body, _ = await get(f"{running.url}/logs/{backend.container_id}")
        assert "did not accept connections on port 8080" in body
        await eventually(lambda: _no_tasks(running), timeout=10, what="task removed")
    finally:
        await running.stop()


async def _no_tasks(running) -> bool:
    return not await running.ctrd.tasks.list()


async def test_start_reaps_the_network_of_containers_that_are_gone(zk, node):
    """An agent killed between deleting a container and its veth leaves the veth; the next
    agent removes it."""
    netns = f"reap{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        settings = network_settings(node)
        leftover = str(uuid.uuid4())
        adapter = NetworkAdapter(settings)
        allocation = await adapter.setup(leftover, f"/var/run/netns/{netns}")
        await Firewall(settings).install()
        await Firewall(settings).attach(allocation)
        assert [i.container_id for i in await adapter.list()] == [leftover]
        running = await start_agent(node)
        try:
            assert await running.runtime.network.list() == []
            assert await running.runtime.firewall.attached() == {}
        finally:
            await running.stop()
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=True)


async def test_start_ends_providers_and_subnets_of_containers_never_made(zk, node):
    """An agent stopped between starting a container's provider (reserving its subnet,
    making its namespaces) and making the container leaves them; the next agent ends the
    provider, releases the subnet, lets go of the namespaces and removes the files."""
    cid = str(uuid.uuid4())
    directory = Path(node.state_dir) / "containers" / cid
    directory.mkdir(parents=True)
    stand_in = subprocess.Popen(  # a provider by its command line, as the agent checks
        [sys.executable, "-c", "import time; time.sleep(120)", "bismuth_provider"],
        start_new_session=True,
    )
    try:
        start = Path(f"/proc/{stand_in.pid}/stat").read_text().rpartition(")")[2].split()[19]
        (directory / "provider.pid").write_text(f"{stand_in.pid} {start}\n")
        reserved = NetworkAdapter(network_settings(node))
        await reserved.reserve(cid)
        made = PreparedNamespaces.of_agent(node.state_dir)
        await made.prepare(cid, IdMapping(node.id_map_start))
        assert namespace_files(node) == [cid]
        running = await start_agent(node)
        try:
            assert await asyncio.to_thread(stand_in.wait, 10) is not None
            assert not directory.exists()
            assert namespace_files(node) == []
            assert running.runtime.network.allocations.allocations() == []
        finally:
            await running.stop()
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()


async def test_agent_stopped_in_the_middle_of_a_create_converges_after_restart(zk, node):
    """The agent is cut off right after the task exists (before its network is wired or it
    is started), leaving a half-made container; the next agent finishes the job cleanly."""
    first = await start_agent(node)
    fid = await operations.create_function(zk, httpd())

    async def task_exists():
        return await first.ctrd.tasks.list()

    await eventually(task_exists, timeout=30, interval=0.005, what="task created")
    await first.stop()  # cancels the create wherever it is: no teardown runs
    second = await start_agent(node)
    try:
        backend = await eventually(
            lambda: running_backend(zk, fid), timeout=30, what="Running after the restart"
        )
        status, body, _ = await get(f"{second.url}/invoke/{backend.container_id}/hello")
        assert status == 200 and body == "hello from layer 2\n"
        links = await second.runtime.network.list()
        assert [i.container_id for i in links] == [str(backend.container_id)]
        assert namespace_files(node) == [str(backend.container_id)]
        assert len(await second.ctrd.tasks.list()) == 1
        assert len(await second.ctrd.containers.list()) == 1
    finally:
        await second.stop()
