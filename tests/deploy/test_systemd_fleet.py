"""The deploy's systemd branch, for real: a fleet with a lab host that boots systemd.

Two lab hosts: ``<p>1`` shares the machine's file system and runs under the toolkit's
supervisord (ZooKeeper, the API, the frontend, containerd and an agent); ``<p>2`` boots
systemd as its PID 1 in a Debian root of its own (``bismuth_lab.systemd``) and is an agent
host, its daemons systemd units. The tests run in order: the deploy left systemd units
running there, a function runs a replica on each host and answers through the frontend, a
second deploy changes nothing, and ``upgrade.py`` moves both agents to a new version, the
systemd one by restarting its unit, while a request loop runs: no failed request, no
container restarted.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator

import pytest

from tasks.wheelhouse import full_version
from tests.deploy.fleet import Fleet
from tests.deploy.pyinfra_runs import assert_no_changes
from tests.deploy.requests_loop import RequestLoop
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

FUNCTION_HOST = "files.systemd.test"
UNITS = ("bismuth-containerd", "bismuth-agent")
FUNCTION = {
    "image": "bismuth.local/python:3.11",
    "cpu": 0.1,
    "memory": 64 << 20,
    "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
    "max_instances": 2,
    "routes": [{"hostname": FUNCTION_HOST}],
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("systemd-fleet"))
    try:
        fleet.lab.up(2, systemd_hosts=1)
        first = fleet.pyinfra("deploy.py")
        assert first.result.returncode == 0, first.describe()
        fleet.figures["first deploy (one host under systemd)"] = f"{first.seconds:.1f} s"
        yield fleet
    finally:
        print("\nfigures:", *(f"  {k}: {v}" for k, v in fleet.figures.items()), sep="\n")
        fleet.lab.down()
        shutil.rmtree(fleet.root, ignore_errors=True)


def unit_pid(fleet: Fleet, unit: str) -> int:
    systemd_host = fleet.hosts[1]
    return int(fleet.ssh(systemd_host, f"systemctl show --property=MainPID --value {unit}"))


def test_the_systemd_host_runs_the_daemons_as_systemd_units(fleet: Fleet) -> None:
    supervised, booted = fleet.hosts
    assert fleet.ssh(booted, "cat /proc/1/comm").strip() == "systemd"
    for unit in UNITS:
        assert fleet.ssh(booted, f"systemctl is-active {unit}").strip() == "active", unit
        assert fleet.ssh(booted, f"systemctl is-enabled {unit}").strip() == "enabled", unit
        assert unit_pid(fleet, unit) > 0
    # Debian's own containerd unit would share the socket and root: stopped and disabled
    state = fleet.ssh(booted, "systemctl is-enabled containerd.service || true").strip()
    assert state == "disabled"
    assert fleet.ssh(booted, "test -e /etc/bismuth/supervisord.conf || echo none") == "none\n"
    assert fleet.ssh(supervised, "cat /proc/1/comm").strip() != "systemd"
    version = full_version(fleet.source, "")
    nodes = fleet.bismuthctl("nodes")["nodes"]
    assert sorted((n["ip"], n["alive"], n["version"]) for n in nodes) == [
        (address, True, version) for address in sorted(fleet.addresses)
    ]


async def running_backends(fleet: Fleet, fid: str) -> dict[str, str]:
    got = await asyncio.to_thread(fleet.api, "GET", f"/function/{fid}")
    backends = [b for b in got["backends"] if not b.get("retiring")]
    assert len(backends) == 2 and all(b["status"] == "Running" for b in backends), backends
    return {b["backend"]["ip"]: b["backend"]["container_id"] for b in backends}


async def test_a_replica_on_each_host_answers_through_the_frontend(fleet: Fleet) -> None:
    fid = (await asyncio.to_thread(fleet.api, "POST", "/function", FUNCTION))["id"]
    placed = await eventually(lambda: running_backends(fleet, fid), 120, 0.5, "2 Running")
    assert sorted(placed) == sorted(fleet.addresses)
    async with RequestLoop(fleet.frontend(), FUNCTION_HOST, 2, max_requests=40) as loop:
        await eventually(lambda: loop.report.sent >= 40, 60, what="40 requests")
    assert loop.report.failed == 0, loop.report
    assert set(loop.report.containers) == set(placed.values())  # both replicas served


def test_a_second_deploy_changes_nothing(fleet: Fleet) -> None:
    again = fleet.pyinfra("deploy.py")
    assert_no_changes(again.result)
    fleet.figures["no-change rerun"] = f"{again.seconds:.1f} s"


async def test_a_rolling_upgrade_restarts_the_systemd_unit_and_keeps_every_request(
    fleet: Fleet,
) -> None:
    label = "sd" + uuid.uuid4().hex[:8]
    new = full_version(fleet.source, label)
    tasks = await asyncio.to_thread(fleet.task_pids)
    agent = unit_pid(fleet, "bismuth-agent")

    async with RequestLoop(fleet.frontend(), FUNCTION_HOST, concurrency=2) as loop:
        upgrade = await asyncio.to_thread(fleet.pyinfra, "upgrade.py", toolkit_version_label=label)
    assert upgrade.result.returncode == 0, upgrade.describe()
    fleet.figures["rolling upgrade of 2 agents"] = f"{upgrade.seconds:.1f} s"
    assert loop.report.failed == 0, loop.report
    assert loop.report.sent > 0, loop.report

    assert unit_pid(fleet, "bismuth-agent") not in (0, agent)  # the unit was restarted
    assert fleet.link(fleet.hosts[1], "bismuth-agent") == new
    assert await asyncio.to_thread(fleet.task_pids) == tasks  # no container restarted
    nodes = (await asyncio.to_thread(fleet.bismuthctl, "nodes"))["nodes"]
    assert {(n["ip"], n["alive"], n["version"]) for n in nodes} == {
        (address, True, new) for address in fleet.addresses
    }
