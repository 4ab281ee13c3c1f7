"""The fleet deploy, for real: pyinfra over SSH to three lab hosts, then an operator's day.

One lab of three hosts (private state dir, subnet, bridge and host names) is deployed once
for the module with ``pyinfra -y inventories/lab.py deploy.py``: a three-node ZooKeeper
ensemble, containerd and the agent on every host, the frontend and the API on the first,
the toolkit installed from a wheelhouse built here. The tests then run in order, as an
operator would: check services, ports, configs and versions (pytest-testinfra over ssh);
run a function with three replicas, one per host, through the frontend; deploy again and
see no change; upgrade the agents host by host to a new version while a request loop runs
(no failed request, no container restarted); try a broken version (the rollout stops at the
first host, which is rolled back); drain a host while requests run. The lab is always torn
down. Needs root, sshd and the Debian packages of ``.ci/run``; builds the wheelhouse from a
snapshot of this checkout (dependencies from earlier wheelhouses or the package index).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import testinfra

from bismuth_lab.state import HostState
from tasks.wheelhouse import full_version
from tests.deploy.fleet import TOOLKIT, Fleet, outsider, snapshot_source
from tests.deploy.pyinfra_runs import assert_no_changes, results_table
from tests.deploy.requests_loop import RequestLoop
from tests.support.waiting import eventually
from tests.support.zkfaults import wait_until

pytestmark = pytest.mark.integration

FUNCTION_HOST = "files.fleet.test"
SUPERVISORD_CONF = "/etc/bismuth/supervisord.conf"
EVERYWHERE = ("bismuth-zookeeper", "bismuth-containerd", "bismuth-agent")
FIRST_ONLY = ("bismuth-api", "bismuth-fe")
START_WAIT = 120.0
FUNCTION = {
    "image": "bismuth.local/python:3.11",
    "cpu": 0.1,
    "memory": 64 << 20,
    "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
    "max_instances": 3,
    "routes": [{"hostname": FUNCTION_HOST}],
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three lab hosts, deployed once; the lab and the control side removed at the end."""
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        fleet.lab.up(3)
        first = fleet.pyinfra("deploy.py")
        assert first.result.returncode == 0, first.describe()
        fleet.figures["first deploy of 3 lab hosts"] = f"{first.seconds:.1f} s"
        fleet.notes["first deploy"] = first.text
        yield fleet
    finally:
        print("\nfleet figures:", *(f"  {k}: {v}" for k, v in fleet.figures.items()), sep="\n")
        fleet.lab.down()
        shutil.rmtree(fleet.root, ignore_errors=True)


def base_version(fleet: Fleet) -> str:
    return full_version(fleet.source, "")


def infra_hosts(fleet: Fleet) -> list[Any]:
    """A testinfra host per lab host, over ssh with the lab's key and known hosts."""
    config = fleet.root / "ssh_config"
    config.write_text(
        "".join(
            f"Host {h.name}\n  HostName {h.address}\n  User root\n"
            f"  IdentityFile {fleet.lab.state_dir / 'id_ed25519'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {fleet.lab.state_dir / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n"
            for h in fleet.hosts
        )
    )
    return [
        testinfra.get_host(f"ssh://{h.name}", ssh_config=str(config), controlpersist=0)
        for h in fleet.hosts
    ]


def listening(host: Any, address: str, port: int) -> bool:
    """Whether ``host`` listens on ``address:port``, on an IPv4 socket or an IPv6 one (Java's
    sockets are IPv6, and ss shows the address as ``::ffff:<address>``)."""
    forms = (address, f"::ffff:{address}")
    return any(host.socket(f"tcp://{a}:{port}").is_listening for a in forms)


def test_the_first_deploy_showed_its_long_steps(fleet: Fleet) -> None:
    """The control machine's builds ran as operations of their own, printing their stages."""
    text = fleet.notes["first deploy"]
    version = base_version(fleet)
    for line in (
        f"building the bismuth {version} wheel",
        "collecting dependency wheels",
        f"wheelhouse of bismuth {version}: ready in",
    ):
        assert line in text, (line, text[-3000:])
    for step in ("Build the wheelhouse of bismuth", "Generate the cluster key in"):
        assert any(step in name for name in results_table(text)), (step, text[-3000:])


def test_services_ports_configs_and_versions(fleet: Fleet) -> None:
    version = base_version(fleet)
    addresses = fleet.addresses
    key = (fleet.control / "cluster.key").read_text()
    pairs = zip(fleet.hosts, infra_hosts(fleet), strict=True)
    for index, (lab_host, host) in enumerate(pairs):
        first = index == 0
        for name in EVERYWHERE + (FIRST_ONLY if first else ()):
            assert host.supervisor(name, supervisorctl_conf=SUPERVISORD_CONF).is_running, name
        for name in () if first else FIRST_ONLY:
            assert not host.file(f"/etc/bismuth/supervisor.d/{name}.conf").exists, name
        for port in (2181, 3888, 8001):  # ZooKeeper's clients and elections, the agent
            assert listening(host, lab_host.address, port), port
        frontend_and_api = ("tcp://0.0.0.0:8000", "tcp://127.0.0.1:8002")
        assert [host.socket(s).is_listening for s in frontend_and_api] == [first, first]

        zoo = host.file("/etc/bismuth/zookeeper/zoo.cfg").content_string
        for n, address in enumerate(addresses, start=1):
            assert f"server.{n}={address}:2888:3888\n" in zoo
        myid = host.file("/var/lib/bismuth/zookeeper/myid").content_string
        assert myid.strip() == str(index + 1)
        agent = host.file("/etc/bismuth/agent.toml").content_string
        assert f'bind = "{lab_host.address}"\n' in agent
        assert 'provider_storage = "local:///var/lib/bismuth/data"\n' in agent
        keyfile = host.file("/etc/bismuth/cluster.key")
        assert (keyfile.mode, keyfile.content_string) == (0o600, key)

        for link in ("current", "bismuth-agent", *(FIRST_ONLY if first else ())):
            assert host.file(f"{TOOLKIT}/{link}").linked_to == f"{TOOLKIT}/{version}", link
        probe = "import bismuth_core; print(bismuth_core.__version__)"
        assert host.check_output(f"{TOOLKIT}/current/bin/python -c '{probe}'") == version
    nodes = fleet.bismuthctl("nodes")["nodes"]
    assert sorted((n["ip"], n["enabled"], n["alive"], n["version"]) for n in nodes) == [
        (address, True, True, version) for address in sorted(addresses)
    ]


async def running_backends(fleet: Fleet, fid: str) -> dict[str, str]:
    """Node -> container of each Running backend, once all ``max_instances`` run."""
    got = await asyncio.to_thread(fleet.api, "GET", f"/function/{fid}")
    backends = [b for b in got["backends"] if not b.get("retiring")]
    running = {b["backend"]["ip"]: b["backend"]["container_id"] for b in backends}
    assert len(backends) == 3 and all(b["status"] == "Running" for b in backends), backends
    return running


async def test_a_function_runs_one_replica_per_host_and_answers_through_the_frontend(
    fleet: Fleet,
) -> None:
    fid = (await asyncio.to_thread(fleet.api, "POST", "/function", FUNCTION))["id"]
    fleet.notes["function"] = fid
    placed = await eventually(lambda: running_backends(fleet, fid), START_WAIT, 0.5, "3 Running")
    assert sorted(placed) == sorted(fleet.addresses)  # one replica on each host
    for h in fleet.hosts:  # each replica's provider runs unprivileged
        listing = "ps -eo user:20=,args= | grep '[b]ismuth_provider' | cut -d' ' -f1 | sort -u"
        assert fleet.ssh(h, listing).split() == ["bismuth-provider"], h.name

    async with RequestLoop(fleet.frontend(), FUNCTION_HOST, 3, max_requests=60) as loop:
        await eventually(lambda: loop.report.sent >= 60, 60, what="60 requests")
    assert loop.report.failed == 0, loop.report
    assert set(loop.report.containers) <= set(placed.values())
    fleet.notes["placed"] = json.dumps(placed)


def test_an_agent_answers_only_the_clusters_daemons(fleet: Fleet) -> None:
    """From another host of the fleet, without the agent credential: 401; the frontend's
    requests (above) carry it. The frontend holds only the key it derives from."""
    target, caller = fleet.hosts[0], fleet.hosts[1]
    cid = json.loads(fleet.notes["placed"])[target.address]
    for path in (f"/invoke/{cid}/", f"/logs/{cid}", "/metrics"):
        probe = f"curl -s -o /dev/null -w '%{{http_code}}' http://{target.address}:8001{path}"
        assert fleet.ssh(caller, probe) == "401", path
    health = f"curl -s -o /dev/null -w '%{{http_code}}' http://{target.address}:8001/healthz"
    assert fleet.ssh(caller, health) == "200"
    fe_key = fleet.ssh(
        target, "stat -c %a /etc/bismuth/frontend.key; cat /etc/bismuth/frontend.key"
    )
    mode, text = fe_key.split("\n", 1)
    assert mode == "600" and text.strip() != (fleet.control / "cluster.key").read_text().strip()


def test_daemon_ports_admit_the_fleet_and_refuse_a_machine_outside_it(fleet: Fleet) -> None:
    """The host firewall: a machine on the same network but not in the inventory reaches no
    daemon port (ZooKeeper, the agent) and still reaches the frontend's public port."""
    first, member = fleet.hosts[0], fleet.hosts[1]
    for port in (2181, 8001):
        connect = f"import socket; socket.create_connection(('{first.address}', {port}), 2)"
        fleet.ssh(member, f'python3 -c "{connect}"')  # a fleet member connects (exit 0)
    with outsider(fleet) as reaches:
        assert not reaches(first.address, 2181)
        assert not reaches(first.address, 8001)
        assert reaches(first.address, 8000)  # the frontend's public port stays open


def frontend_routes(fleet: Fleet) -> dict[str, Any]:
    """nginx's route table on the frontend host, through its root-only control socket."""
    socket = "/run/bismuth/fe/control.sock"
    text = fleet.ssh(fleet.hosts[0], f"curl -sS --unix-socket {socket} http://nginx/v1/routes")
    return dict(json.loads(text)["routes"])


def http_code(fleet: Fleet, host: HostState, url: str) -> str:
    """The status lab host ``host`` gets for ``url`` within 3 s; ``000``: no connection."""
    curl = ["curl", "-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}", url]
    done = fleet.lab.ssh(host, ["sh", "-c", shlex.join(curl) + " || true"], timeout=30)
    return done.stdout.strip() or "000"


def test_frontends_reach_containers_on_every_node_and_nobody_else_does(fleet: Fleet) -> None:
    """nginx connects to every replica's own address: the frontend host routes each other
    node's pool through that node (routes kept by bismuthfe), and each node's firewall lets
    only frontends reach a serving port; a host of the fleet that is no frontend, and a host
    outside the fleet, get nowhere even with routes of their own."""
    frontend, *others = fleet.hosts
    route = frontend_routes(fleet)[FUNCTION_HOST]
    endpoints = {(p["address"], p["port"]) for p in route["direct"]}
    assert len(endpoints) == 3 and not route["agent"], route
    pools = {n["ip"]: n["pool"] for n in fleet.bismuthctl("nodes")["nodes"]}
    assert len(set(pools.values())) == 3, pools  # a pool of its own for every node
    within = {
        address: [ip for ip, pool in pools.items() if ip_address(address) in ip_network(pool)]
        for address, _ in endpoints
    }
    assert sorted(map(len, within.values())) == [1, 1, 1], within  # each in one node's pool
    listed = json.loads(fleet.ssh(frontend, "ip -j route show proto 177"))
    assert {(r["dst"], r["gateway"]) for r in listed} == {
        (pools[h.address], h.address) for h in others
    }
    for address, port in endpoints:  # (a replica limited to 0.1 cpu may be slow to answer)
        url = f"http://{address}:{port}/"
        wait_until(lambda url=url: http_code(fleet, frontend, url) == "200", 60, what=url)

    not_frontend, far = others
    pool = pools[far.address]
    far_urls = [f"http://{a}:{p}/" for a, p in endpoints if within[a] == [far.address]]
    fleet.ssh(not_frontend, f"ip route add {pool} via {far.address}")
    try:
        assert [http_code(fleet, not_frontend, url) for url in far_urls] == ["000"]
    finally:
        fleet.ssh(not_frontend, f"ip route del {pool} via {far.address}")
    with outsider(fleet, {pools[h.address]: h.address for h in fleet.hosts}) as reaches:
        assert [reaches(address, port) for address, port in endpoints] == [False] * 3


def test_second_deploy_reports_no_changes(fleet: Fleet) -> None:
    again = fleet.pyinfra("deploy.py")
    assert_no_changes(again.result)
    fleet.figures["no-change rerun of the deploy"] = f"{again.seconds:.1f} s"


def upgrade_history(fleet: Fleet) -> list[list[tuple[datetime, str]]]:
    """Each host's ``upgrades.log``: (time, what) per line."""
    histories = []
    for h in fleet.hosts:
        text = fleet.ssh(h, "cat /var/log/bismuth/upgrades.log 2>/dev/null || true")
        histories.append(
            [
                (datetime.fromisoformat(line.split(" ", 1)[0]), line.split(" ", 1)[1])
                for line in text.splitlines()
            ]
        )
    return histories


async def test_rolling_upgrade_keeps_every_container_and_every_request(fleet: Fleet) -> None:
    old, label = base_version(fleet), "up" + uuid.uuid4().hex[:8]
    new = full_version(fleet.source, label)
    before = await asyncio.to_thread(fleet.task_pids)
    assert len(before) == 4, before  # three replicas and the sample function

    async with RequestLoop(fleet.frontend(), FUNCTION_HOST, concurrency=4) as loop:
        upgrade = await asyncio.to_thread(fleet.pyinfra, "upgrade.py", toolkit_version_label=label)
    assert upgrade.result.returncode == 0, upgrade.describe()
    fleet.figures["upgrade of 3 agents (staging included)"] = f"{upgrade.seconds:.1f} s"
    fleet.figures["requests during the upgrade"] = str(loop.report)
    assert loop.report.failed == 0, loop.report
    assert loop.report.sent >= 100, loop.report

    assert await asyncio.to_thread(fleet.task_pids) == before  # no container restarted
    nodes = (await asyncio.to_thread(fleet.bismuthctl, "nodes"))["nodes"]
    assert {(n["ip"], n["alive"], n["version"]) for n in nodes} == {
        (address, True, new) for address in fleet.addresses
    }
    first = fleet.hosts[0]
    assert [fleet.link(first, name) for name in ("bismuth-api", "bismuth-fe")] == [old, old]

    healthy = re.compile(rf"agent {re.escape(old)} -> {re.escape(new)}: healthy after (\d+) ms")
    spans = []
    for h, history in zip(fleet.hosts, upgrade_history(fleet), strict=True):
        ((ended, what),) = history
        took = healthy.fullmatch(what)
        assert took is not None, what
        seconds = int(took[1]) / 1000
        spans.append((ended.timestamp() - seconds, ended.timestamp()))
        fleet.figures[f"rollout of {h.name} (restart to healthy)"] = f"{seconds:.1f} s"
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans  # one by one
    fleet.notes["version"] = new


def broken_source(fleet: Fleet) -> Path:
    """A snapshot whose ``bismuthd`` exits at once: a bad release."""
    source = snapshot_source(fleet.control / "broken")
    main = source / "bismuth_agent" / "main.py"
    signature = "def main(argv: list[str] | None = None) -> None:\n"
    text = main.read_text()
    assert text.count(signature) == 1
    main.write_text(
        text.replace(signature, f'{signature}    sys.exit("bismuthd: broken on purpose")\n')
    )
    return source


async def test_a_broken_version_stops_the_rollout_at_the_first_host(fleet: Fleet) -> None:
    current = fleet.notes["version"]
    first, *rest = fleet.hosts
    before = await asyncio.to_thread(fleet.task_pids)
    agents = [fleet.agent_pid(h) for h in rest]

    upgrade = await asyncio.to_thread(
        fleet.pyinfra,
        "upgrade.py",
        toolkit_source=broken_source(fleet),
        toolkit_version_label="broken",
        upgrade_gate_wait=60,
    )
    assert upgrade.result.returncode != 0, upgrade.describe()
    fleet.figures["broken upgrade, stopped and rolled back"] = f"{upgrade.seconds:.1f} s"
    text = upgrade.text
    assert f"agent of {first.address} failed its health gate" in text, text
    assert "bismuthd: broken on purpose" in text
    assert f"rolling the agent of {first.address} back to {current}" in text
    for h in rest:
        assert f"[{h.name}] left on its version: the rollout stopped at {first.name}" in text

    assert [fleet.agent_pid(h) for h in rest] == agents  # never restarted
    assert [fleet.link(h, "bismuth-agent") for h in fleet.hosts] == [current] * 3
    nodes = (await asyncio.to_thread(fleet.bismuthctl, "nodes"))["nodes"]
    assert {(n["alive"], n["version"]) for n in nodes} == {(True, current)}
    assert await asyncio.to_thread(fleet.task_pids) == before
    broken = full_version(fleet.source, "broken")
    _, what = upgrade_history(fleet)[0][-1]
    assert what == f"agent {current} -> {broken}: failed its health gate; back on {current}"


async def test_draining_a_host_moves_its_replicas_without_failed_requests(fleet: Fleet) -> None:
    fid, victim = fleet.notes["function"], fleet.hosts[2]
    ctl = f"{TOOLKIT}/current/bin/bismuthctl --zookeeper {fleet.zookeeper}"
    drain = f"{ctl} drain {victim.address} --wait 90"
    async with RequestLoop(fleet.frontend(), FUNCTION_HOST, concurrency=4) as loop:
        await asyncio.to_thread(fleet.ssh, fleet.hosts[0], drain, 120)
        placed = await eventually(lambda: running_backends(fleet, fid), START_WAIT, 0.5)
    fleet.figures["requests during the drain"] = str(loop.report)
    assert victim.address not in placed
    assert loop.report.failed == 0, loop.report
    assert loop.report.sent > 0
    nodes = {n["ip"]: n for n in (await asyncio.to_thread(fleet.bismuthctl, "nodes"))["nodes"]}
    assert (nodes[victim.address]["enabled"], nodes[victim.address]["containers"]) == (False, 0)
    await asyncio.to_thread(fleet.ssh, fleet.hosts[0], f"{ctl} undrain {victim.address}")
