"""Providers forked from the agent's zygote keep every property of a provider of their own.

A real agent (in-process) on the session's containerd, busybox containers. Each container's
provider is a process of its own, forked by the zygote and moved into the container's
provider cgroup, as the providers' unprivileged user with no new privileges; the zygote
itself runs confined the same way in a cgroup of its own. Stopping the agent ends the
zygote, never the providers, which the next agent adopts; a zygote that died is started
again for the next container.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

from bismuth_agent.cgroups import Cgroup
from bismuth_agent.providers import recorded_pid
from bismuth_core import operations
from bismuth_lab import procs
from tests.support.agenthost import httpd, running_backend, start_agent
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def config(node):
    work = Path(tempfile.mkdtemp(prefix="bismuth-zygote-"))
    work.chmod(0o711)  # a path the providers' user may walk, as /var/lib
    yield dataclasses.replace(node, provider_user="nobody", provider_storage=f"local://{work}/data")
    shutil.rmtree(work, ignore_errors=True)


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in the status of {pid}")


async def provider_of(zk, agent) -> tuple[uuid.UUID, int]:
    """A new container's id and its provider's PID."""
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    pid = recorded_pid(container_dir(agent.config, backend.container_id))
    assert pid is not None
    return backend.container_id, pid


def container_dir(config, cid: uuid.UUID) -> Path:
    return Path(config.state_dir) / "containers" / str(cid)


def zygote_pid(agent) -> int:
    pid = agent.runtime.providers.zygote.pid
    assert pid is not None
    return pid


async def test_each_provider_is_forked_confined_and_in_its_own_cgroup(zk, config):
    nobody = pwd.getpwnam("nobody")
    agent = await start_agent(config)
    try:
        one_cid, one = await provider_of(zk, agent)
        two_cid, two = await provider_of(zk, agent)
        zygote = zygote_pid(agent)
        assert one != two and parent(one) == parent(two) == zygote
        for pid in (zygote, one, two):
            assert status_field(pid, "Uid").split() == [str(nobody.pw_uid)] * 4
            assert status_field(pid, "Groups") == ""
            assert status_field(pid, "NoNewPrivs") == "1"
        root = config.cgroup_root
        assert zygote in Cgroup(f"{root}/providers/zygote").pids()
        for cid, pid in ((one_cid, one), (two_cid, two)):
            cgroup = Cgroup(f"{root}/providers/{cid}")
            assert cgroup.pids() == {pid}
            assert cgroup.memory_limit() == config.provider_memory
        assert {one, two}.isdisjoint(Cgroup(f"{root}/providers/zygote").pids())
    finally:
        await agent.stop()


async def test_an_agent_restart_ends_the_zygote_and_adopts_its_providers(zk, config):
    first = await start_agent(config)
    try:
        cid, kept = await provider_of(zk, first)
        old_zygote = zygote_pid(first)
    finally:
        await first.stop()
    await eventually(lambda: not procs.running(old_zygote), timeout=10, what="zygote gone")
    assert procs.running(kept)
    second = await start_agent(config)
    try:
        _, fresh = await provider_of(zk, second)
        assert parent(fresh) == zygote_pid(second) != old_zygote
        await eventually(lambda: cid in second.agent.containers, timeout=10, what="adopted")
        assert recorded_pid(container_dir(config, cid)) == kept  # adopted, not started again
        assert procs.running(kept)
    finally:
        await second.stop()


async def test_a_zygote_that_died_is_started_again_for_the_next_provider(zk, config):
    agent = await start_agent(config)
    try:
        await provider_of(zk, agent)
        dead = zygote_pid(agent)
        os.kill(dead, signal.SIGKILL)
        await eventually(lambda: not procs.running(dead), timeout=10, what="zygote killed")
        _, pid = await provider_of(zk, agent)
        assert parent(pid) == zygote_pid(agent) != dead
    finally:
        await agent.stop()
