"""The single-node deploy, for real: ``pyinfra -y inventories/local.py deploy.py`` on this machine.

The whole cluster comes up: ZooKeeper, the API, the frontend, containerd, the agent, the base
image and the sample function, which the test then calls through the frontend. Then ``make
down`` stops it, the containers' providers included. Every path points into a temporary
directory (containerd's root, state and socket too), every port is a free one, the node is a
loopback address of its own (so the agent's nftables table ``inet bismuth_n<ip>`` is the
test's alone), with its own ZooKeeper environment, cgroup parent and container subnet pool:
the operator's cluster (``make up``) is never touched. Needs root and the Debian packages of
``.ci/run``. The base image archive is built into the checkout's ``var/images/`` once and
reused by later runs. The cluster key is generated in the test's directory, not in the
checkout's ``var/secrets/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from bismuth_agent.config import AgentConfig
from bismuth_agent.network import Firewall
from bismuth_agent.providers import recorded_pid
from bismuth_agent.service import network_settings
from bismuth_core import __version__
from bismuth_core.credentials import cluster_credentials
from bismuth_lab import procs
from tests.deploy.pyinfra_runs import (
    REPO,
    assert_no_changes,
    changed_operations,
    data_args,
    output,
    results_table,
    run,
)
from tests.support.waiting import eventually
from tests.support.zkserver import free_port

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.prefix) / "bin"
ARCHIVE = REPO / "var" / "images" / "python-3.11.oci.tar"
DEPLOY_TIMEOUT = 420.0  # the first run may build the base image (~25 s) and import it
UP_TIMEOUT = 30.0
PROGRAMS = (
    "bismuth-zookeeper",
    "bismuth-api",
    "bismuth-fe-nginx",
    "bismuth-fe",
    "bismuth-containerd",
    "bismuth-agent",
)
SAMPLE_HOST = "hello.bismuth.local"
NAMESPACE = "bismuth"
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETWORK_POOL = "10.252.0.0/24"
CONTAINER_NETWORK = "10.252.0.0/16"


@dataclass
class LocalCluster:
    """Settings of one test deploy, and how to run it and look at what it brought up."""

    root: Path
    env: str = field(default_factory=lambda: "deploy" + uuid.uuid4().hex[:12])
    node_ip: str = field(
        default_factory=lambda: f"127.254.{random.randrange(256)}.{random.randrange(1, 255)}"
    )
    cgroup_parent: str = field(
        default_factory=lambda: f"/bismuth-deploytest-{uuid.uuid4().hex[:8]}"
    )
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("zookeeper", "peer", "election", "agent"):
            self.ports[name] = free_port(self.node_ip)
        for name in ("api", "fe", "fe_admin"):
            self.ports[name] = free_port()

    @property
    def zookeeper(self) -> str:
        return f"{self.node_ip}:{self.ports['zookeeper']}"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / "etc" / "supervisord.conf"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "run" / "containerd" / "containerd.sock"

    @property
    def cluster_key_source(self) -> Path:
        """The key on the "control machine": private to this test, outside the checkout."""
        return self.root / "control" / "cluster.key"

    @property
    def admin_token_source(self) -> Path:
        """The admin token the deploy keeps next to the cluster key."""
        return self.root / "control" / "cluster.admin-token"

    def admin_headers(self) -> dict[str, str]:
        token = (self.root / "etc" / "admin.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            bind=self.node_ip, network_pool=NETWORK_POOL, state_dir=str(self.agent_state_dir)
        )

    @property
    def agent_state_dir(self) -> Path:
        return self.root / "var" / "agent"

    def providers(self) -> dict[str, int]:
        """Container id -> PID of its running provider, from the agent's pid files."""
        found = {}
        for directory in self.agent_state_dir.glob("containers/*"):
            pid = recorded_pid(directory)
            if pid is not None:
                found[directory.name] = pid
        return found

    @property
    def firewall_table(self) -> str:
        return "bismuth_n" + self.node_ip.replace(".", "_")

    @property
    def host_firewall_table(self) -> str:
        """The deploy's own table: per environment, so the operator's is never this one."""
        return f"bismuth_host_{self.env}"

    def data(self) -> dict[str, str]:
        p = self.ports
        return {
            "etc_dir": str(self.root / "etc"),
            "var_dir": str(self.root / "var"),
            "log_dir": str(self.root / "log"),
            "run_dir": str(self.root / "run"),
            "zookeeper_env": self.env,
            "node_ip": self.node_ip,
            "zookeeper_port": str(p["zookeeper"]),
            "zookeeper_peer_port": str(p["peer"]),
            "zookeeper_election_port": str(p["election"]),
            "api_bind": f"127.0.0.1:{p['api']}",
            "fe_bind": f"127.0.0.1:{p['fe']}",
            "fe_admin_bind": f"127.0.0.1:{p['fe_admin']}",
            "agent_port": str(p["agent"]),
            "service_manager": "supervisord",
            "containerd_address": str(self.containerd_socket),
            "containerd_root": str(self.root / "var" / "containerd"),
            "containerd_state": str(self.root / "run" / "containerd"),
            "agent_cgroup_parent": self.cgroup_parent,
            "network_pool": NETWORK_POOL,
            "container_network": CONTAINER_NETWORK,
            "base_image_archive": str(ARCHIVE),
            "cluster_key_source": str(self.cluster_key_source),
            "toolkit_dir": str(self.root / "opt"),
        }

    def deploy(self) -> subprocess.CompletedProcess[str]:
        args = [str(VENV_BIN / "pyinfra"), "-y", "inventories/local.py", "deploy.py"]
        return run([*args, *data_args(self.data())], DEPLOY_TIMEOUT)

    def make_down(self) -> subprocess.CompletedProcess[str]:
        """``make down``, aimed at this deploy instead of the one in group data."""
        overrides = {
            "ETC_DIR": str(self.root / "etc"),
            "AGENT_STATE_DIR": str(self.agent_state_dir),
            "CONTAINERD_ADDRESS": str(self.containerd_socket),
            "CONTAINERD_NAMESPACE": NAMESPACE,
            "SERVICE_MANAGER": "supervisord",
            "HOST_FIREWALL_TABLE": self.host_firewall_table,
        }
        return run(["make", "-s", "down", *(f"{k}={v}" for k, v in overrides.items())], 120)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["supervisorctl", "-c", str(self.supervisord_conf), *args], 60)

    def supervisord_pid(self) -> int | None:
        pidfile = self.root / "run" / "supervisord.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().strip())
        return None

    def tasks(self) -> dict[str, int]:
        """Container id -> PID of every task in containerd's ``bismuth`` namespace."""
        ctr = ["ctr", "-a", str(self.containerd_socket), "-n", NAMESPACE, "tasks", "ls"]
        result = run(ctr, 30)
        assert result.returncode == 0, output(result)
        rows = [line.split() for line in result.stdout.splitlines()[1:]]
        return {row[0]: int(row[1]) for row in rows if len(row) >= 2}

    def teardown(self) -> None:
        """Stop everything, even after a failed test; leave no task, table or cgroup behind."""
        if self.supervisord_pid() is not None:
            self.make_down()
        # only if make down could not stop them: providers are in no cgroup of the test's
        for pid in [*self._cgroup_pids(), *self.providers().values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.firewall_table in nft_tables():
            # as the agent removes it: forwarding goes off again if the agent turned it on
            asyncio.run(Firewall(network_settings(self.agent_config())).remove_all())
        if self.host_firewall_table in nft_tables():
            run(["nft", "delete", "table", "inet", self.host_firewall_table], 30)
        self._remove_cgroups()
        shutil.rmtree(self.root, ignore_errors=True)
        assert self.firewall_table not in nft_tables()
        assert self.host_firewall_table not in nft_tables()

    def _cgroup_dirs(self) -> list[Path]:
        """The test's cgroups in every hierarchy, children first."""
        found: list[Path] = []
        for hierarchy in [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]:
            parent = hierarchy / self.cgroup_parent.lstrip("/")
            if parent.is_dir():
                found += sorted(parent.glob("**/"), key=lambda p: -len(p.parts))
        return found

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for directory in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return pids

    def _remove_cgroups(self) -> None:
        for directory in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                directory.rmdir()


def four_letter_word(host: str, port: int, word: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(word)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def nft_tables() -> list[str]:
    listing = subprocess.run(
        ["nft", "-j", "list", "tables", "inet"], capture_output=True, text=True, check=True
    )
    entries = json.loads(listing.stdout or "{}").get("nftables", [])
    return [e["table"]["name"] for e in entries if "table" in e]


def veths_of(container_ids: set[str]) -> list[str]:
    """Host interfaces that belong to these containers (their alias is the container id)."""
    listing = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True)
    links = json.loads(listing.stdout or "[]")
    return [link["ifname"] for link in links if link.get("ifalias") in container_ids]


async def get(url: str, host: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Host": host} if host else {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.text()


async def answers_200(url: str) -> bool:
    status, _, _ = await get(url)
    assert status == 200, f"{url} answered {status}"
    return True


def bismuthctl_json(cluster: LocalCluster, *command: str) -> Any:
    """``bismuthctl --json`` as on the host: with the cluster key the deploy installed."""
    args = [str(VENV_BIN / "bismuthctl"), "--zookeeper", cluster.zookeeper]
    args += ["--cluster-key-file", str(cluster.root / "etc" / "cluster.key")]
    result = run([*args, "--zookeeper-env", cluster.env, "--json", *command], 60)
    assert result.returncode == 0, output(result)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A single-node cluster deployed once for this module; taken down at the end in any case.

    Its root is world-traversable (711), as the containers' own root must reach their bundles
    and /etc files in it.
    """
    root = Path(tempfile.mkdtemp(prefix="bismuth-deploy-"))
    root.chmod(0o711)
    cluster = LocalCluster(root)
    try:
        first = cluster.deploy()
        assert first.returncode == 0, output(first)
        yield cluster
    finally:
        cluster.teardown()


async def test_deploy_brings_up_zookeeper_api_and_frontend(cluster: LocalCluster) -> None:
    assert four_letter_word(cluster.node_ip, cluster.ports["zookeeper"], b"ruok") == b"imok"
    api = f"http://127.0.0.1:{cluster.ports['api']}"
    fe = f"http://127.0.0.1:{cluster.ports['fe']}"
    admin = f"http://127.0.0.1:{cluster.ports['fe_admin']}"
    await eventually(lambda: answers_200(f"{api}/healthz"), UP_TIMEOUT, what="API /healthz")
    await eventually(lambda: answers_200(f"{admin}/healthz"), UP_TIMEOUT, what="frontend /healthz")

    status, headers, body = await get(f"{fe}/hello", host="nobody.invalid")
    assert (status, headers["Content-Type"].split(";")[0]) == (404, "application/json"), body
    assert "error" in json.loads(body)


async def test_this_node_is_enabled_and_its_agent_alive(cluster: LocalCluster) -> None:
    listing = await asyncio.to_thread(bismuthctl_json, cluster, "nodes")
    nodes = [(n["ip"], n["enabled"], n["alive"]) for n in listing["nodes"]]
    assert nodes == [(cluster.node_ip, True, True)]
    agent = f"http://{cluster.node_ip}:{cluster.ports['agent']}/healthz"
    await eventually(lambda: answers_200(agent), UP_TIMEOUT, what="agent /healthz")


async def test_sample_function_answers_through_the_frontend(cluster: LocalCluster) -> None:
    fe = f"http://127.0.0.1:{cluster.ports['fe']}/"
    status, headers, body = await get(fe, host=SAMPLE_HOST)
    assert status == 200, body
    container = headers["X-Bismuth-Container-ID"]
    greeting, _, visits = body.rstrip("\n").rpartition(", visit ")
    assert greeting == f"Hello from Bismuth, container {container}"
    # each answer counts itself in the function's key/value store, through its provider
    _, _, again = await get(fe, host=SAMPLE_HOST)
    assert again.rstrip("\n").rpartition(", visit ")[2] == str(int(visits) + 1)
    # the design's promise to operators: containerd's container id is the container's UUID
    tasks = await asyncio.to_thread(cluster.tasks)
    assert list(tasks) == [container]
    functions = (await asyncio.to_thread(bismuthctl_json, cluster, "functions"))["functions"]
    assert [f["routes"] for f in functions] == [[SAMPLE_HOST]]


async def test_nginx_serves_the_sample_straight_from_its_container(cluster: LocalCluster) -> None:
    """nginx, run by supervisord as bismuth-fe-nginx, holds the route its controller pushed
    through the root-only socket, and connects to the container's own address."""
    (pid,) = cluster.supervisorctl("pid", "bismuth-fe-nginx").stdout.split()
    assert Path(f"/proc/{pid}/exe").resolve() == Path("/usr/sbin/nginx")
    run_dir = cluster.root / "run" / "fe"
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    control = aiohttp.UnixConnector(path=str(run_dir / "control.sock"))
    async with (
        aiohttp.ClientSession(connector=control) as session,
        session.get("http://nginx/v1/routes") as response,
    ):
        routes = (await response.json())["routes"]
    (function,) = (await asyncio.to_thread(bismuthctl_json, cluster, "functions"))["functions"]
    ((address, port, container),) = [
        (p["address"], p["port"], p["container"]) for p in routes[SAMPLE_HOST]["direct"]
    ]
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(NETWORK_POOL)
    assert (port, container) == (8000, function["backends"][0]["backend"]["container_id"])
    admin = f"http://127.0.0.1:{cluster.ports['fe_admin']}"
    _, _, health = await get(f"{admin}/healthz")
    assert json.loads(health)["nginx"]["synced"] is True

    async def counted() -> bool:
        _, _, text = await get(f"{admin}/metrics")
        wanted = f'bismuth_fe_requests_total{{code="2xx",function="{function["id"]}"}}'
        return any(line.startswith(wanted) for line in text.splitlines())

    await eventually(counted, UP_TIMEOUT, what="the sample's requests counted")


def test_providers_keep_their_data_under_the_deploys_own_var_dir(cluster: LocalCluster) -> None:
    config = tomllib.loads((cluster.root / "etc" / "agent.toml").read_text())
    data = cluster.root / "var" / "data"
    assert config["provider_storage"] == f"local://{data}"
    assert data.is_dir()  # made by the agent for the sample function's provider
    assert len(cluster.providers()) == 1


def test_providers_run_unprivileged_from_an_install_of_the_checkout(cluster: LocalCluster) -> None:
    """A checkout may sit where other users cannot read it: the provider runs as
    bismuth-provider from a versioned install of this checkout, in a cgroup of its own."""
    import pwd

    (pid,) = cluster.providers().values()
    user = pwd.getpwnam("bismuth-provider")
    status = Path(f"/proc/{pid}/status").read_text()
    assert status.split("Uid:")[1].split()[:4] == [str(user.pw_uid)] * 4
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[0].decode().startswith(f"{cluster.root / 'opt'}/{__version__}+checkout.")
    assert argv[1:3] == [b"-m", b"bismuth_provider"]
    assert f"{cluster.cgroup_parent}/providers/" in Path(f"/proc/{pid}/cgroup").read_text()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"CLUSTER_KEY" not in environ and b"ZOOKEEPER" not in environ


async def test_cluster_key_is_installed_and_the_api_stores_secrets(
    cluster: LocalCluster,
) -> None:
    installed = cluster.root / "etc" / "cluster.key"
    assert installed.read_bytes() == cluster.cluster_key_source.read_bytes()
    frontend_key = cluster.root / "etc" / "frontend.key"  # derived, never the cluster key
    assert frontend_key.read_text().strip() == (
        cluster_credentials(file=str(installed)).frontend_key_text()
    )
    for path in (installed, cluster.cluster_key_source, frontend_key):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 0), path
    (function,) = (await asyncio.to_thread(bismuthctl_json, cluster, "functions"))["functions"]
    url = f"{cluster.api_url}/function/{function['id']}/secrets"
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout, headers=cluster.admin_headers()) as session:
        async with session.put(f"{url}/deploy-check", data=b"value") as response:
            assert response.status == 204, await response.text()
        async with session.get(url) as response:
            assert await response.json() == {"secrets": ["deploy-check"]}
        async with session.delete(f"{url}/deploy-check") as response:
            assert response.status == 204, await response.text()


async def test_admin_token_is_installed_and_the_sample_belongs_to_default(
    cluster: LocalCluster,
) -> None:
    installed = cluster.root / "etc" / "admin.token"
    assert installed.read_bytes() == cluster.admin_token_source.read_bytes()
    for path in (installed, cluster.admin_token_source):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 0), path
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{cluster.api_url}/function") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(
            f"{cluster.api_url}/function", headers=cluster.admin_headers()
        ) as response:
            (sample,) = await response.json()
    tenants = (await asyncio.to_thread(bismuthctl_json, cluster, "tenant", "list"))["tenants"]
    assert [t["name"] for t in tenants] == ["default"]
    assert sample["tenant"] == tenants[0]["id"]
    listed = (await asyncio.to_thread(bismuthctl_json, cluster, "token", "list"))["tokens"]
    token_id = cluster.admin_token_source.read_text().split("_")[1]
    assert [(t["id"], t["scope"]) for t in listed] == [(token_id, "admin")]


def test_the_host_firewall_guards_exactly_the_daemons_ports(cluster: LocalCluster) -> None:
    listing = run(["nft", "-j", "list", "table", "inet", cluster.host_firewall_table], 30)
    assert listing.returncode == 0, output(listing)
    entries = json.loads(listing.stdout)["nftables"]
    sets = {e["set"]["name"]: e["set"].get("elem", []) for e in entries if "set" in e}
    p = cluster.ports
    daemons = {p[n] for n in ("zookeeper", "peer", "election", "agent", "api", "fe_admin")}
    assert set(sets["ports"]) == daemons and p["fe"] not in sets["ports"]
    assert sets["fleet"] == [cluster.node_ip]
    rules = [e["rule"] for e in entries if "rule" in e]
    assert {r["chain"] for r in rules} == {"input", "daemon_port"}
    # the only rule of the hooked chain looks at new connections to those ports alone
    (hooked,) = [r for r in rules if r["chain"] == "input"]
    assert "@ports" in json.dumps(hooked["expr"]) and '"new"' in json.dumps(hooked["expr"])


def test_the_tree_refuses_clients_without_the_clusters_credentials(
    cluster: LocalCluster,
) -> None:
    anonymous = KazooClient(hosts=f"{cluster.zookeeper}/{cluster.env}")
    anonymous.start(10)
    try:
        for path in ("/", "/function", "/node", "/token", "/secret"):
            with pytest.raises(NoAuthError):
                anonymous.get_children(path)
        with pytest.raises(NoAuthError):
            anonymous.create("/route/evil.example", b"x")
    finally:
        anonymous.stop()
        anonymous.close()
    ctl = [str(VENV_BIN / "bismuthctl"), "--zookeeper", cluster.zookeeper]
    without_key = run([*ctl, "--zookeeper-env", cluster.env, "--cluster-key-file", "", "nodes"], 60)
    assert without_key.returncode == 6, output(without_key)


def test_second_deploy_reports_no_changes(cluster: LocalCluster) -> None:
    assert_no_changes(cluster.deploy())


async def test_make_down_kills_function_tasks_and_stops_every_daemon(
    cluster: LocalCluster,
) -> None:
    supervisord = cluster.supervisord_pid()
    assert supervisord is not None and procs.running(supervisord)
    pids = cluster.supervisorctl("pid", *PROGRAMS).stdout.split()
    assert len(pids) == len(PROGRAMS) and all(p.isdigit() and int(p) > 0 for p in pids), pids
    tasks = await asyncio.to_thread(cluster.tasks)
    assert len(tasks) == 1 and veths_of(set(tasks)), tasks
    providers = cluster.providers()
    assert list(providers) == list(tasks), providers  # one provider per container
    processes = [supervisord, *map(int, pids), *tasks.values(), *providers.values()]

    result = await asyncio.to_thread(cluster.make_down)
    assert result.returncode == 0, output(result)
    assert "killed and deleted 1 function task(s)" in result.stdout, output(result)
    assert "stopped 1 provider(s)" in result.stdout, output(result)

    await eventually(
        lambda: not any(procs.running(pid) for pid in processes), UP_TIMEOUT, what="processes gone"
    )
    # a veth goes with its container's network namespace, once the kernel has freed that
    await eventually(lambda: veths_of(set(tasks)) == [], UP_TIMEOUT, what="veths gone")
    assert cluster.firewall_table not in nft_tables()  # no guard of a stopped cluster stays
    assert cluster.host_firewall_table not in nft_tables()
    assert f"removed the host firewall (table inet {cluster.host_firewall_table})" in result.stdout
    assert not unix_socket_answers(cluster.containerd_socket)
    with pytest.raises(ConnectionRefusedError):
        four_letter_word(cluster.node_ip, cluster.ports["zookeeper"], b"ruok")


async def test_deploy_after_make_down_brings_the_same_container_back(
    cluster: LocalCluster,
) -> None:
    # What an earlier release left, which the daemons of this one refuse: supervisord,
    # started again by the deploy, runs the frontend with it first.
    fe_toml = cluster.root / "etc" / "fe.toml"
    earlier = [ln for ln in fe_toml.read_text().splitlines() if "frontend_key_file" not in ln]
    fe_toml.write_text("\n".join(earlier) + "\n")
    again = await asyncio.to_thread(cluster.deploy)
    assert again.returncode == 0, output(again)
    assert f"Create the sample function ({SAMPLE_HOST})" not in changed_operations(
        results_table(again.stdout + again.stderr)
    )
    (function,) = (await asyncio.to_thread(bismuthctl_json, cluster, "functions"))["functions"]
    (backend,) = function["backends"]
    assert cluster.host_firewall_table in nft_tables()  # loaded again: it was gone
    fe = f"http://127.0.0.1:{cluster.ports['fe']}/"
    status, headers, body = await get(fe, host=SAMPLE_HOST)
    assert status == 200, body
    assert headers["X-Bismuth-Container-ID"] == backend["backend"]["container_id"]
    assert list(await asyncio.to_thread(cluster.tasks)) == [headers["X-Bismuth-Container-ID"]]
