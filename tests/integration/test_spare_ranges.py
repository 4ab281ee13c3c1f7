"""Host id ranges remapped ahead of need: the next containers start on snapshots made for
them in the background, each used by one container at a time, kept across agent restarts,
and an agent that stops leaves no half-made snapshot or mount behind.

A real agent (in-process), the session's containerd, busybox containers.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from pathlib import Path

import pytest

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.snapshots import SnapshotService
from bismuth_agent.containerd.types import DEFAULT_SNAPSHOTTER
from bismuth_core import operations
from tests.support.agenthost import httpd, running_backend, start_agent
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

IMAGE = "bismuth.test/busybox:1"


@pytest.fixture
def config(node):
    return dataclasses.replace(node, id_map_spare=2)


def range_start(config, index: int) -> int:
    return config.id_map_start + index * config.id_map_size


async def snapshots(config) -> dict[str, str]:
    """Every snapshot of the node's namespace: name -> parent."""
    async with ContainerdClient(config.containerd_address, config.containerd_namespace) as c:
        found = await SnapshotService(c.conn, DEFAULT_SNAPSHOTTER).list()
    return {s.name: s.parent for s in found}


def remap_of(names, config, index: int) -> str | None:
    start = range_start(config, index)
    suffix = f"/{start}:{start}:{config.id_map_size}"
    found = [n for n in names if n.startswith(f"bismuth-remap/{IMAGE}@") and n.endswith(suffix)]
    return found[0] if found else None


async def remapped(config, *indexes: int) -> dict[int, str] | None:
    names = await snapshots(config)
    keys = {i: remap_of(names, config, i) for i in indexes}
    return keys if all(keys.values()) else None  # type: ignore[return-value]


async def start_container(zk) -> uuid.UUID:
    fid = await operations.create_function(zk, httpd())
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    return backend.container_id


def leftovers(config, names) -> list[str]:
    """Work snapshots of remaps and remap mounts of this agent that were not cleaned up."""
    work = [n for n in names if n.startswith("bismuth-remap/") and "/work-" in n]
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{config.state_dir}/remap/")
    ]
    return work + mounts


async def test_the_next_containers_start_on_ranges_remapped_ahead(zk, config):
    agent = await start_agent(config)
    try:
        first = await start_container(zk)
        assert agent.runtime.id_ranges.lookup(first).host_start == range_start(config, 0)
        keys = await eventually(lambda: remapped(config, 1, 2), timeout=30, what="spares")
        second = await start_container(zk)
        assert agent.runtime.id_ranges.lookup(second).host_start == range_start(config, 1)
        assert (await snapshots(config))[str(second)] == keys[1]  # the prepared one
        await eventually(lambda: remapped(config, 3), timeout=30, what="the next spare")
        assert not leftovers(config, await snapshots(config))
    finally:
        await agent.stop()


async def test_spares_outlive_an_agent_restart_and_a_stop_leaves_nothing_half_made(zk, config):
    first = await start_agent(config)
    try:
        await start_container(zk)
        keys = await eventually(lambda: remapped(config, 1, 2), timeout=30, what="spares")
    finally:
        await first.stop()
    assert not leftovers(config, await snapshots(config))
    second = await start_agent(config)
    try:
        cid = await start_container(zk)
        assert second.runtime.id_ranges.lookup(cid).host_start == range_start(config, 1)
        assert (await snapshots(config))[str(cid)] == keys[1]
    finally:
        await second.stop()
    assert not leftovers(config, await snapshots(config))


async def test_a_remap_known_from_before_but_gone_is_made_again(zk, node):
    """The agent takes a range's remap it met before without asking containerd; when that
    snapshot is gone (its image removed meanwhile), the next container still starts."""
    agent = await start_agent(node)  # no spares: nothing remaps in the background
    try:
        fid = await operations.create_function(zk, httpd())
        await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
        gone = (await remapped(node, 0) or {})[0]
        await operations.delete_function(zk, fid)
        await eventually(lambda: not agent.agent.containers, timeout=30, what="the container gone")
        async with ContainerdClient(node.containerd_address, node.containerd_namespace) as c:
            await SnapshotService(c.conn, DEFAULT_SNAPSHOTTER).remove(gone)
        assert await remapped(node, 0) is None
        cid = await start_container(zk)
        assert agent.runtime.id_ranges.lookup(cid).host_start == range_start(node, 0)
        assert (await snapshots(node))[str(cid)] == remap_of(await snapshots(node), node, 0)
    finally:
        await agent.stop()


async def test_an_agent_start_clears_the_mounts_a_killed_remap_left(config):
    """A remap mounts the layer in a directory of the agent's own; an agent killed in the
    middle leaves that mount, and the next agent's start removes it before any remap."""
    left = Path(config.state_dir) / "remap" / "bismuth-remap-killed"
    left.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(left)], check=True)
    assert leftovers(config, [])
    agent = await start_agent(config)
    try:
        assert not leftovers(config, [])
        assert not left.exists()
    finally:
        await agent.stop()
