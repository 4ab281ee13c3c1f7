"""Honest deploys on two fresh lab hosts: ``--dry`` changes nothing anywhere, and the
pre-flight checks stop a deploy, one line per problem per host, before anything changes.

Nothing is ever deployed here: every run either is dry or fails its pre-flight, so the
hosts and the control side must be exactly as fresh afterwards as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bismuth_lab.state import HostState
from tests.deploy.fleet import PYINFRA, RUN_TIMEOUT, Fleet, Run
from tests.deploy.pyinfra_runs import data_args, detected_changes, run

pytestmark = pytest.mark.integration

HOST_DIRS = "/etc/bismuth /var/lib/bismuth /var/log/bismuth /opt/bismuth"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("checks"))
    try:
        fleet.lab.up(2)
        yield fleet
    finally:
        fleet.lab.down()


def control_data(fleet: Fleet) -> dict[str, str]:
    """Every file the deploy makes on the control side, in the test's own (fresh) place."""
    return {
        "admin_token_source": str(fleet.control / "secrets" / "admin.token"),
        "cluster_key_source": str(fleet.control / "secrets" / "cluster.key"),
        "base_image_source": str(fleet.control / "images" / "python.oci.tar"),
        "wheelhouse_dir": str(fleet.control / "wheelhouse"),
    }


def control_files(fleet: Fleet) -> list[str]:
    """What exists on the control side besides the source snapshot."""
    return sorted(
        str(p.relative_to(fleet.control))
        for p in fleet.control.rglob("*")
        if not p.is_relative_to(fleet.source)
    )


def host_files(fleet: Fleet) -> dict[str, str]:
    """Every file in each host's private Bismuth directories (all empty on a fresh host)."""
    script = f"find {HOST_DIRS} -mindepth 1 2>/dev/null; true"
    return {h.name: ssh_output(fleet, h, script) for h in fleet.hosts}


def ssh_output(fleet: Fleet, target: HostState, script: str, tries: int = 4) -> str:
    """``script``'s output on ``target``; a connection sshd resets (ssh's exit 255, seen
    while other labs ran on the machine) is tried again, with backoff."""
    for attempt in range(tries):
        done = fleet.lab.ssh(target, ["sh", "-c", script], timeout=60)
        if done.returncode != 255 or attempt == tries - 1:
            break
        time.sleep(0.5 * 2**attempt)
    assert done.returncode == 0, f"{target.name}: {script!r}: exit {done.returncode}: {done.stderr}"
    return done.stdout


def pyinfra(fleet: Fleet, *flags: str, **data: str) -> Run:
    """``pyinfra [flags] inventories/lab.py deploy.py`` with the test's control side.

    A connection the lab's sshd resets at once (seen while other labs ran on the machine)
    is tried again, as pyinfra's ``ssh_connect_retries`` lets an operator do.
    """
    wanted = fleet.data(**control_data(fleet), ssh_connect_retries="3", **data)
    args = [str(PYINFRA), *flags, "inventories/lab.py", "deploy.py", *data_args(wanted)]
    return Run(run(args, RUN_TIMEOUT, fleet.env()), 0.0)


def test_dry_run_builds_generates_and_changes_nothing(fleet: Fleet) -> None:
    assert control_files(fleet) == []
    before = host_files(fleet)
    assert before == {h.name: "" for h in fleet.hosts}

    dry = pyinfra(fleet, "--dry")
    assert dry.result.returncode == 0, dry.describe()
    changes = detected_changes(dry.text)
    hosts = f"{len(fleet.hosts)} ("
    for step in (
        "Build the wheelhouse of bismuth",
        "Generate the cluster key in",
        "Build bismuth.local/python:3.11 on this machine",
    ):
        found = [cells[0] for name, cells in changes.items() if name.startswith(step)]
        assert found and found[0].startswith(hosts), (step, dry.describe())
    token = [c[0] for name, c in changes.items() if name.startswith("Generate the admin token")]
    assert token and token[0].startswith("1 ("), dry.describe()  # the API host only
    assert "pre-flight" not in dry.text

    assert control_files(fleet) == []  # no wheelhouse, image, key or token
    assert host_files(fleet) == before  # no host changed


def test_preflight_failures_name_each_problem_of_each_host(fleet: Fleet) -> None:
    failed = pyinfra(
        fleet,
        "-y",
        required_debian="11",
        min_free_disk_mb="99999999",
        toolkit_python="/nonexistent/python3",
        node_ip="127.0.0.1",
    )
    assert failed.result.returncode != 0, failed.describe()
    assert "pre-flight checks failed, nothing was changed:" in failed.text
    lines = failed.text.splitlines()
    for h in fleet.hosts:
        expected = [
            "runs debian 12, not Debian 11 (required_debian)",
            "MiB free for /var/lib/bismuth, needs 99999999 (min_free_disk_mb)",
            "MiB free for /opt/bismuth, needs 99999999 (min_free_disk_mb)",
            "toolkit_python /nonexistent/python3 does not run there",
            "node_ip is 127.0.0.1, the single-node default",
        ]
        for problem in expected:
            matching = [line for line in lines if line.startswith(f"  {h.name}: ")]
            assert sum(problem in line for line in matching) == 1, (problem, failed.describe())

    duplicate = pyinfra(fleet, "-y", node_ip="10.9.9.9")
    assert duplicate.result.returncode != 0, duplicate.describe()
    first, second = (h.name for h in fleet.hosts)
    assert f"  {first}: node_ip 10.9.9.9 is also the node_ip of {second}" in duplicate.text
    assert f"  {second}: node_ip 10.9.9.9 is also the node_ip of {first}" in duplicate.text
    assert duplicate.text.count("node_ip 10.9.9.9 is also") == 2, duplicate.describe()

    assert control_files(fleet) == []
    assert host_files(fleet) == {h.name: "" for h in fleet.hosts}
