"""``bismuthctl`` against a real ZooKeeper, in-process and as the installed console script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path

import pytest

from bismuth_core import cluster, layout, operations
from bismuth_core.definition import parse_definition
from bismuth_core.layout import ContainerRecord
from bismuth_ctl.main import main
from tests.integration.conftest import Run
from tests.support.waiting import eventually
from tests.support.zkserver import free_port

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("bismuthctl")


async def script(*args: str) -> Run:
    """Run the installed console script in a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def definition(max_instances: int = 1, hosts: tuple[str, ...] = ("app.test",)):
    return parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": 0.5,
            "memory": 64 << 20,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
            "max_instances": max_instances,
            "routes": [{"hostname": h} for h in hosts],
        }
    )


def one_error_line(err: str) -> str:
    (line,) = err.splitlines()
    assert line.startswith("bismuthctl: error: ") and "Traceback" not in err
    return line


# --- bootstrap ---------------------------------------------------------------------------


async def test_bootstrap_is_idempotent(ctl, zk_env):
    before = await ctl("nodes")
    assert before.code == 3
    assert "not bootstrapped" in one_error_line(before.err)

    first = await ctl("--json", "bootstrap")
    assert first.code == 0 and first.json() == {"environment": zk_env, "changed": True}
    second = await ctl("bootstrap")
    assert second.code == 0 and "nothing changed" in second.out
    assert (await ctl("--json", "nodes")).json() == {"nodes": []}


class Gate:
    """A loopback forwarder to ZooKeeper that drops connections until ``open``; counts tries."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = False
        self.attempts = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()


async def test_bootstrap_waits_for_zookeeper_to_come_up(
    zk_server, zk_env, capsys, cluster_key_file
):
    """``--wait`` outlasts ``--timeout``: refused for longer than that, it still succeeds."""
    gate = Gate(zk_server.port)
    await gate.start()
    try:
        argv = ["--zookeeper", f"127.0.0.1:{gate.port}", "--zookeeper-env", zk_env]
        argv += ["--cluster-key-file", cluster_key_file]
        started = time.monotonic()
        running = asyncio.ensure_future(
            asyncio.to_thread(main, [*argv, "--timeout", "0.5", "bootstrap", "--wait", "30"])
        )
        await eventually(
            lambda: gate.attempts >= 2 and time.monotonic() - started > 1.0,
            what="connection attempts refused for longer than --timeout",
        )
        assert not running.done()
        gate.open = True
        assert await running == 0
        assert "created the cluster tree" in capsys.readouterr().out
    finally:
        await gate.close()


# --- nodes -----------------------------------------------------------------------------


async def test_provision_and_nodes_listing(zk, ctl, standins):
    agent = await standins.add(cpus=2.0, memory=4 << 30)
    first = await ctl("provision", "10.20.30.40")
    assert first.code == 0 and "provisioned" in first.out
    again = await ctl("provision", "10.20.30.40", "--json")
    assert again.code == 0 and again.json() == {"node": "10.20.30.40", "changed": False}

    listed = await ctl("nodes", "--json")
    assert listed.code == 0
    by_ip = {n["ip"]: n for n in listed.json()["nodes"]}
    assert by_ip["10.20.30.40"] == {
        "ip": "10.20.30.40",
        "enabled": True,
        "alive": False,
        "version": None,
        "cpus": 0.0,
        "memory": 0,
        "reserved_cpu": 0,
        "reserved_memory": 0,
        "containers": 0,
        "pool": None,
    }
    assert by_ip[agent.ip]["alive"] is True and by_ip[agent.ip]["version"] == "standin"
    assert by_ip[agent.ip]["cpus"] == 2.0 and by_ip[agent.ip]["memory"] == 4 << 30

    table = (await ctl("nodes")).out.splitlines()
    assert table[0].split() == [
        "IP", "ENABLED", "ALIVE", "VERSION", "CPUS", "MEMORY", "RESERVED", "CONTAINERS", "POOL"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in table[1:]}
    assert rows[agent.ip].split()[1:6] == ["yes", "yes", "standin", "2", "4Gi"]
    assert rows["10.20.30.40"].split()[1:3] == ["yes", "no"]
    # Aligned: every column starts at the same offset in each line.
    column = table[0].index("CONTAINERS")
    assert all(line[column - 2 : column] == "  " for line in table)


async def test_deprovision_is_refused_while_the_node_has_containers(
    zk, ctl, standins, cluster_key_file
):
    agent = await standins.add()
    fid = await operations.create_function(zk, definition())
    base = ["--zookeeper", zk.hosts, "--zookeeper-env", zk.env]
    base += ["--cluster-key-file", cluster_key_file]

    refused = await script(*base, "deprovision", agent.ip)
    assert refused.code == 4
    assert "still has 1 container(s)" in one_error_line(refused.err)

    await operations.delete_function(zk, fid)
    live = await ctl("deprovision", agent.ip)
    assert live.code == 4 and "live agent" in one_error_line(live.err)

    await agent.stop()
    done = await ctl("deprovision", agent.ip)
    assert done.code == 0 and f"node {agent.ip} deprovisioned" in done.out
    assert await cluster.read_node(zk, agent.ip) is None
    gone = await script(*base, "--json", "deprovision", agent.ip)
    assert gone.code == 3 and gone.json() == {"error": f"node {agent.ip} is not provisioned"}


# --- drain -------------------------------------------------------------------------------


async def two_nodes_one_container(zk, standins, **kwargs):
    """Two stand-ins and a one-container function; returns (fid, source, destination)."""
    a = await standins.add()
    b = await standins.add(**kwargs)
    fid = await operations.create_function(zk, definition())
    (first,) = (await cluster.read_function(zk, fid)).backends
    return (fid, a, b) if first.ip == a.ip else (fid, b, a)


async def test_drain_moves_the_container_and_undrain_reenables(zk, ctl, standins):
    fid, src, dst = await two_nodes_one_container(zk, standins)
    (old,) = (await cluster.read_function(zk, fid)).backends

    drained = await ctl("--json", "drain", src.ip)
    assert drained.code == 0
    doc = drained.json()
    assert doc["node"] == src.ip and doc["problems"] == []
    (replacement,) = doc["replacements"]
    assert replacement["ip"] == dst.ip
    view = await cluster.read_function(zk, fid)
    assert view.retiring == (old,)
    assert [b.ip for b in view.active] == [dst.ip]
    nodes = {n["ip"]: n for n in (await ctl("--json", "nodes")).json()["nodes"]}
    assert nodes[src.ip]["enabled"] is False

    # No API leader runs here: play it, retiring the old container once the new one runs.
    await eventually(lambda: operations.finish_rollout(zk, fid), what="rollout finished")
    node = await cluster.read_node(zk, src.ip)
    assert node is not None and node.containers == {} and not node.enabled

    undrained = await ctl("undrain", src.ip)
    assert undrained.code == 0 and "enabled" in undrained.out
    node = await cluster.read_node(zk, src.ip)
    assert node is not None and node.enabled


async def test_drain_wait_returns_once_the_node_is_empty(zk, ctl, standins):
    fid, src, _dst = await two_nodes_one_container(zk, standins)
    running = asyncio.ensure_future(ctl("drain", src.ip, "--wait", "30"))
    await eventually(lambda: operations.finish_rollout(zk, fid), what="rollout finished")
    done = await running
    assert done.code == 0, done.err
    assert f"node {src.ip} has no containers left" in done.out


async def test_drain_wait_times_out_while_replacements_do_not_run(zk, ctl, standins):
    _fid, src, _dst = await two_nodes_one_container(zk, standins, status=None)
    timed_out = await ctl("--json", "drain", src.ip, "--wait", "0.5")
    assert timed_out.code == 1
    assert "timed out after 0.5s" in one_error_line(timed_out.err)
    doc = timed_out.json()
    assert doc["remaining"] == 1 and doc["error"].startswith("timed out")


async def test_drain_without_room_elsewhere_fails(zk, ctl, standins):
    agent = await standins.add()
    await operations.create_function(zk, definition())
    failed = await ctl("--json", "drain", agent.ip)
    assert failed.code == 1
    assert "could not move 1 container(s)" in one_error_line(failed.err)
    doc = failed.json()
    assert doc["replacements"] == [] and len(doc["problems"]) == 1


# --- functions ------------------------------------------------------------------------


async def test_functions_listing_shows_backends_with_status(zk, ctl, standins):
    await standins.add()
    await standins.add(status=None)
    fid = await operations.create_function(zk, definition(2, ("a.test", "b.test")))
    view = await cluster.read_function(zk, fid)

    async def one_running_one_pending() -> bool:
        (function,) = (await ctl("--json", "functions")).json()["functions"]
        return sorted(b["status"] for b in function["backends"]) == ["Pending", "Running"]

    await eventually(one_running_one_pending, what="one Running, one Pending backend")
    (function,) = (await ctl("--json", "functions")).json()["functions"]
    assert function["id"] == str(fid) and function["routes"] == ["a.test", "b.test"]
    assert function["max_instances"] == 2
    assert {b["backend"]["ip"] for b in function["backends"]} == {b.ip for b in view.backends}
    assert all(b["retiring"] is False for b in function["backends"])

    table = (await ctl("functions")).out.splitlines()
    assert table[0].split() == ["ID", "ROUTES", "MAX", "NODE", "CONTAINER", "STATUS"]
    assert table[1].split()[:3] == [str(fid), "a.test,b.test", "2"]
    assert sorted(line.split()[-1] for line in table[1:]) == ["Pending", "Running"]


# --- consistency ---------------------------------------------------------------------


async def test_consistency_reports_then_fixes(zk, ctl, standins):
    agent = await standins.add(status=None)
    fid = await operations.create_function(zk, definition())
    orphan = uuid.uuid4()
    await zk.create(layout.container_path(agent.ip, orphan), ContainerRecord(uuid.uuid4()).encode())
    await zk.create(layout.route_path("ghost.test"), layout.encode_route(uuid.uuid4()))
    await zk.delete(layout.route_path("app.test"))

    found = await ctl("consistency")
    assert found.code == 1
    # the hand-made container also never reserved its share on the node
    assert "found 4 inconsistencies" in one_error_line(found.err)
    for kind in (
        "orphan-container",
        "route-to-missing-function",
        "missing-route",
        "reservation-drift",
    ):
        assert kind in found.out

    fixed = await ctl("--json", "consistency", "--fix")
    assert fixed.code == 0, fixed.err
    doc = fixed.json()
    assert sorted(f["kind"] for f in doc["repaired"]) == [
        "missing-route",
        "orphan-container",
        "reservation-drift",
        "route-to-missing-function",
    ]
    assert doc["remaining"] == []

    clean = await ctl("consistency")
    assert clean.code == 0 and "is consistent" in clean.out and clean.err == ""
    assert layout.decode_route((await zk.get(layout.route_path("app.test")))[0]) == fid


# --- errors ------------------------------------------------------------------------------


async def test_bad_ip_is_a_usage_error(zk, cluster_key_file):
    base = ["--zookeeper", zk.hosts, "--zookeeper-env", zk.env, "--cluster-key-file"]
    bad = await script(*base, cluster_key_file, "provision", "10.0.0")
    assert bad.code == 2
    assert "'10.0.0' is not an IPv4 address" in one_error_line(bad.err)
    assert bad.out == ""


async def test_unknown_node_is_not_found(zk, ctl, cluster_key_file):
    missing = await ctl("undrain", "10.1.2.3")
    assert missing.code == 3
    assert one_error_line(missing.err) == "bismuthctl: error: node 10.1.2.3 is not provisioned"
    base = ["--zookeeper", zk.hosts, "--zookeeper-env", zk.env, "--cluster-key-file"]
    drained = await script(*base, cluster_key_file, "drain", "10.1.2.3")
    assert drained.code == 3 and "not provisioned" in one_error_line(drained.err)


async def test_unreachable_zookeeper_exits_5():
    hosts = f"127.0.0.1:{free_port()}"
    down = await script("--zookeeper", hosts, "--timeout", "1", "nodes")
    assert down.code == 5
    assert one_error_line(down.err) == (
        f"bismuthctl: error: cannot reach ZooKeeper at {hosts} within 1s"
    )
    as_json = await script("--zookeeper", hosts, "--timeout", "1", "--json", "nodes")
    assert as_json.code == 5 and "cannot reach ZooKeeper" in as_json.json()["error"]


async def test_settings_from_config_file_and_environment(zk, tmp_path, cluster_key_file):
    config = tmp_path / "ctl.toml"
    config.write_text(
        f'zookeeper = "{zk.hosts}"\nzookeeper_env = "{zk.env}"\n'
        f'cluster_key_file = "{cluster_key_file}"\n'
    )
    provisioned = await script("--config", str(config), "provision", "10.7.7.7")
    assert provisioned.code == 0, provisioned.err
    assert await cluster.read_node(zk, "10.7.7.7") is not None

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bismuth_ctl.main", "--json", "nodes",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            "BISMUTH_ZOOKEEPER": zk.hosts,
            "BISMUTH_ZOOKEEPER_ENV": zk.env,
            "BISMUTH_CLUSTER_KEY_FILE": cluster_key_file,
        },
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert [n["ip"] for n in json.loads(out)["nodes"]] == ["10.7.7.7"]
