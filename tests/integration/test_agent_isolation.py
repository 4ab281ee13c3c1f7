"""Hostile code in a container stays in it: limits and network isolation seen from inside.

Containers are scheduled onto an in-process agent (real ZooKeeper, private containerd, runc,
network namespaces, nftables); commands run inside them through the agent's /invoke of an
Executable function.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading

import pytest

from bismuth_core import cluster, operations
from bismuth_core.layout import ContainerStatus
from tests.support.agenthost import (
    get,
    httpd,
    run_in,
    running_backend,
    shell_container,
    start_agent,
    statuses,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_process_identity_inside(zk, agent):
    backend = await shell_container(zk, agent)
    status, out = await run_in(agent, backend, "id -u; id -g; hostname; echo $BISMUTH_CONTAINER_ID")
    assert status == 200, out
    uid, gid, hostname, cid = out.split()
    assert (uid, gid) == ("1000", "1000")
    assert hostname == cid == str(backend.container_id)
    status, out = await run_in(agent, backend, "cat /proc/self/uid_map")
    assert out.split()[:2] == ["0", str(agent.config.id_map_start)]
    # no capabilities, and kernel paths are not writable
    status, out = await run_in(agent, backend, "grep CapEff /proc/self/status")
    assert out.split()[1] == "0000000000000000"
    status, out = await run_in(agent, backend, "echo 1 > /proc/sys/kernel/panic && echo written")
    assert "written" not in out


async def test_container_cannot_reach_another_container_or_host_ports(zk, agent):
    server = await operations.create_function(zk, httpd())
    target = await eventually(lambda: running_backend(zk, server), timeout=30, what="B Running")
    b_ip = str(agent.agent.containers[target.container_id].made.allocation.container_address)
    a = await shell_container(zk, agent)
    a_host_side = str(agent.agent.containers[a.container_id].made.allocation.host_address)

    listener = socket.create_server(("0.0.0.0", 0))  # a "host daemon" on every address
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = listener.accept()
                accepted.append(peer)
                conn.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        # the host reaches B (that is how the agent proxies to it) ...
        status, _body, _ = await get(f"{agent.url}/invoke/{target.container_id}/hello")
        assert status == 200
        # ... but A reaches neither B nor the host's daemon port
        probe = "nc -w 1 {ip} {port} </dev/null >/dev/null 2>&1 && echo open || echo closed"
        status, out = await run_in(agent, a, probe.format(ip=b_ip, port=8080))
        assert out.strip() == "closed"
        status, out = await run_in(agent, a, probe.format(ip=a_host_side, port=port))
        assert out.strip() == "closed"
        assert accepted == []
    finally:
        listener.close()


async def test_memory_limit_kills_and_reports_failed(zk, agent):
    hog = {
        "Server": [
            ["/bin/sh", "-c", "dd if=/dev/zero of=/dev/null bs=256M count=1; sleep 3600"],
            8080,
        ]
    }
    fid = await operations.create_function(zk, httpd(invoke_mode=hog, memory=32 << 20))

    async def failed():
        return ContainerStatus.FAILED in await statuses(zk, fid)

    await eventually(failed, timeout=30, what="Failed after OOM")
    (backend,) = (await cluster.read_function(zk, fid)).backends

    async def noted():
        _status, body, _ = await get(f"{agent.url}/logs/{backend.container_id}")
        return "out of memory" in body

    await eventually(noted, timeout=10, what="OOM noted in the container's log")


async def test_fork_bomb_is_contained_by_the_pids_limit(zk, node):
    limited = dataclasses.replace(node, pids_limit=32)
    running = await start_agent(limited)
    try:
        bomb = await shell_container(zk, running)
        calm = await shell_container(zk, running)
        script = "for i in $(seq 1 200); do sleep 60 >/dev/null 2>&1 & done 2>/dev/null; echo x"
        await asyncio.wait_for(run_in(running, bomb, script), 20)
        pids = await running.ctrd.tasks.pids(str(bomb.container_id))
        assert 0 < len(pids) <= 32
        status, out = await run_in(running, calm, "echo still fine")
        assert status == 200 and out.strip() == "still fine"
    finally:
        await running.stop()
