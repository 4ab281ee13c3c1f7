"""Every container's PID 1 is an init (Debian's tini, mounted from the host): a function's
process stops at SIGTERM even if it installs no handler, and orphans are reaped.

Real containers (busybox image) on an in-process agent with a real ZooKeeper, containerd
and runc. The agents here wait 60 s between SIGTERM and SIGKILL, so a container that is
gone well before that was stopped by its SIGTERM.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from bismuth_agent.containerd.errors import NotFound
from bismuth_core import operations
from tests.support.agenthost import httpd, running_backend, start_agent
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

GRACE = 60.0
HTTPD = ["/bin/httpd", "-f", "-p", "8080", "-h", "/etc"]  # installs no SIGTERM handler
# Three orphans: each subshell starts a sleep and exits, so the sleep's parent becomes PID 1
ORPHANS = ["/bin/sh", "-c", f"for i in 1 2 3; do (sleep 0.3 &); done; exec {' '.join(HTTPD)}"]


@pytest.fixture
async def patient(node):
    running = await start_agent(replace(node, stop_grace=GRACE))
    yield running
    await running.stop()


def namespace_processes(pid: int) -> list[tuple[int, str, str]]:
    """(pid, comm, state) of every process in the PID namespace of host process ``pid``."""
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != ns:
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        found.append((int(entry.name), comm, stat[stat.rindex(")") + 2]))
    return found


async def task_pid(agent, backend) -> int:
    return (await agent.ctrd.tasks.get(str(backend.container_id))).pid


async def test_the_init_is_pid_1_and_the_function_its_child(zk, patient):
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    init = await task_pid(patient, backend)
    assert Path(f"/proc/{init}/comm").read_text().strip() == "init"
    children = [p for p, _c, _s in namespace_processes(init) if p != init]
    parents = {Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1] for p in children}
    assert parents == {str(init)}
    assert [c for _p, c, _s in namespace_processes(init) if c != "init"] == ["httpd"]


async def test_a_removed_container_stops_at_sigterm_not_at_the_grace_period(zk, patient):
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    await task_pid(patient, backend)
    await operations.delete_function(zk, fid)

    async def gone() -> bool:
        try:
            await task_pid(patient, backend)
        except NotFound:
            return True
        return False

    await eventually(gone, timeout=GRACE / 3, what="the task gone long before SIGKILL")


async def test_orphans_are_reaped(zk, patient):
    fid = await operations.create_function(zk, httpd(invoke_mode={"Server": [ORPHANS, 8080]}))
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    init = await task_pid(patient, backend)

    def settled() -> list[tuple[int, str, str]] | None:
        left = namespace_processes(init)
        done = all(c != "sleep" and s != "Z" for _p, c, s in left)
        return left if done else None

    left = await eventually(settled, timeout=20, what="the orphans exited and were reaped")
    assert sorted(c for _p, c, _s in left) == ["httpd", "init"]
