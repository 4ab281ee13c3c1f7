"""The provider as code in a container sees it: real agent, containerd, ZooKeeper, provider.

Each function here runs a probe (Python in the base image, Executable mode) that makes the
HTTP calls it is given to ``http://169.254.169.254:9000`` with its own ``BISMUTH_AUTH``, or
opens TCP connections, and prints what it got back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest

from bismuth_agent.config import AgentConfig
from bismuth_agent.providers import recorded_pid
from bismuth_core import cluster, operations
from bismuth_core.definition import parse_definition
from bismuth_core.layout import ContainerStatus
from bismuth_core.secrets import SecretBox, generate_cluster_key, load_cluster_key
from bismuth_lab import procs
from bismuth_provider.storage.base import Quotas
from bismuth_provider.storage.local import LocalStorage
from tests.support.agenthost import (
    AgentService,
    end_providers,
    get,
    httpd,
    running_backend,
    start_agent,
    statuses,
)
from tests.support.clusterkey import AGENT_AUTH, KEY_TEXT
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PROBE = r"""
import base64, json, os, socket, sys, urllib.error, urllib.request
out = []
for op in json.load(sys.stdin):
    if op[0] == "connect":
        try:
            socket.create_connection((op[1], op[2]), timeout=1.5).close()
            out.append("open")
        except OSError as exc:
            out.append(type(exc).__name__)
        continue
    method, path, body, token = op
    data = None if body is None else base64.b64decode(body)
    req = urllib.request.Request("http://169.254.169.254:9000" + path, data=data, method=method)
    token = os.environ["BISMUTH_AUTH"] if token is None else token
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            out.append([resp.status, base64.b64encode(resp.read()).decode()])
    except urllib.error.HTTPError as err:
        out.append([err.code, base64.b64encode(err.read()).decode()])
json.dump(out, sys.stdout)
"""


def probe_function(**changes: object):
    raw: dict[str, object] = {
        "image": "bismuth.local/python:3.11",
        "cpu": 0.5,
        "memory": 128 << 20,
        "invoke_mode": {"Executable": ["/usr/bin/python3", "-c", PROBE]},
        "max_instances": 1,
        "routes": [],
    }
    raw.update(changes)
    return parse_definition(raw)


@dataclasses.dataclass
class Reply:
    status: int
    body: bytes

    @property
    def json(self) -> object:
        return json.loads(self.body)


class Probe:
    """One running probe container: ``call`` makes provider requests from inside it."""

    def __init__(self, agent: AgentService, fid: uuid.UUID, cid: uuid.UUID) -> None:
        self.agent, self.fid, self.cid = agent, fid, cid

    async def run(self, ops: list[list[object]]) -> list[object]:
        url = f"{self.agent.url}/invoke/{self.cid}"
        session = aiohttp.ClientSession(headers=AGENT_AUTH)
        async with session as http, http.post(url, data=json.dumps(ops)) as resp:
            body = await resp.read()
            assert resp.status == 200, body
        return json.loads(body)

    async def call(
        self, method: str, path: str, body: bytes | None = None, token: str | None = None
    ) -> Reply:
        (reply,) = await self.calls([(method, path, body, token)])
        return reply

    async def calls(self, calls: list[tuple[str, str, bytes | None, str | None]]) -> list[Reply]:
        ops: list[list[object]] = [
            [m, p, None if b is None else base64.b64encode(b).decode(), t] for m, p, b, t in calls
        ]
        return [Reply(s, base64.b64decode(b)) for s, b in await self.run(ops)]  # type: ignore[misc]

    async def connect(self, host: str, port: int) -> str:
        (result,) = await self.run([["connect", host, port]])
        return str(result)

    @property
    def directory(self) -> Path:
        return Path(self.agent.config.state_dir) / "containers" / str(self.cid)

    @property
    def token(self) -> str:
        return (self.directory / "token").read_text().strip()

    @property
    def provider_pid(self) -> int | None:
        return recorded_pid(self.directory)

    async def provider_address(self) -> str:
        made = self.agent.agent.containers[self.cid].made
        assert made is not None
        return str(made.allocation.provider_address)


async def deploy_probe(zk, agent: AgentService, **changes: object) -> Probe:
    fid = await operations.create_function(zk, probe_function(**changes))
    backend = await eventually(lambda: running_backend(zk, fid), timeout=60, what="probe Running")
    return Probe(agent, fid, backend.container_id)


@pytest.fixture
async def pyagent(pynode: AgentConfig):
    running = await start_agent(pynode)
    yield running
    await running.stop()


@pytest.fixture(params=["local", "s3"])
async def storage_agent(request, pynode: AgentConfig):
    """An agent whose providers keep data on this host's disk, or in S3 (a loopback server)."""
    config = pynode
    if request.param == "s3":
        settings = request.getfixturevalue("s3_settings")
        config = dataclasses.replace(
            pynode,
            provider_storage=f"s3://{request.getfixturevalue('s3_bucket')}/bismuth",
            provider_s3={
                "endpoint": settings.endpoint,
                "access_key": settings.access_key,
                "secret_key": settings.secret_key,
            },
        )
    running = await start_agent(config)
    yield running
    await running.stop()


# --- key/value and blobs -------------------------------------------------------------------


async def test_kv_round_trip_and_errors_from_inside(zk, storage_agent):
    probe = await deploy_probe(zk, storage_agent)
    set_, got, gone, missing, empty_key = await probe.calls(
        [
            ("POST", "/kv/v1/settings/colour", b"blue", None),
            ("GET", "/kv/v1/settings/colour", None, None),
            ("DELETE", "/kv/v1/settings/colour", None, None),
            ("GET", "/kv/v1/settings/colour", None, None),
            ("GET", "/kv/v1/a//b", None, None),
        ]
    )
    assert set_.status == 204
    assert (got.status, got.body) == (200, b"blue")
    assert gone.status == 204
    assert missing.status == 404 and "no value" in missing.json["error"]
    assert empty_key.status == 400 and "'//'" in empty_key.json["error"]
    control = await probe.call("GET", "/kv/v1/a%01b")
    assert control.status == 400 and "control" in control.json["error"]
    too_big = await probe.call("POST", "/kv/v1/big", b"x" * ((1 << 20) + 1))
    assert too_big.status == 413 and "limit" in too_big.json["error"]


async def test_blob_create_replace_list_and_errors_from_inside(zk, storage_agent):
    probe = await deploy_probe(zk, storage_agent)
    content = os.urandom(300_000)
    replies = await probe.calls(
        [
            ("POST", "/blob/v1/photos/1.jpg", content, None),
            ("POST", "/blob/v1/photos/1.jpg", b"again", None),
            ("PUT", "/blob/v1/photos/2.jpg", b"nope", None),
            ("POST", "/blob/v1/photos/2.jpg", b"two", None),
            ("POST", "/blob/v1/notes.txt", b"n", None),
            ("PUT", "/blob/v1/photos/2.jpg", b"TWO", None),
            ("GET", "/blob/v1/photos/1.jpg", None, None),
            ("GET", "/blob/v1/photos/2.jpg", None, None),
            ("GET", "/blob/v1/?prefix=photos/&limit=1", None, None),
            ("GET", "/blob/v1/?prefix=photos/&limit=1&after=photos/1.jpg", None, None),
            ("DELETE", "/blob/v1/notes.txt", None, None),
            ("GET", "/blob/v1/", None, None),
        ]
    )
    statuses = [r.status for r in replies]
    assert statuses == [201, 409, 404, 201, 201, 200, 200, 200, 200, 200, 204, 200]
    assert "exists" in replies[1].json["error"] and "no blob" in replies[2].json["error"]
    assert replies[6].body == content and replies[7].body == b"TWO"
    assert replies[8].json == {"keys": ["photos/1.jpg"], "next": "photos/1.jpg"}
    assert replies[9].json == {"keys": ["photos/2.jpg"], "next": None}
    assert replies[11].json == {"keys": ["photos/1.jpg", "photos/2.jpg"], "next": None}


async def test_writes_past_the_quota_are_refused_and_change_nothing(zk, storage_agent):
    probe = await deploy_probe(zk, storage_agent, svc_quotas={"kv": 100, "blob": 1000})
    replies = await probe.calls(
        [
            ("POST", "/kv/v1/a", b"x" * 60, None),
            ("POST", "/kv/v1/b", b"y" * 60, None),
            ("GET", "/kv/v1/b", None, None),
            ("POST", "/kv/v1/a", b"z" * 100, None),
            ("GET", "/kv/v1/a", None, None),
            ("POST", "/blob/v1/big", b"b" * 800, None),
            ("PUT", "/blob/v1/big", b"c" * 1001, None),
            ("POST", "/blob/v1/more", b"d" * 300, None),
            ("GET", "/blob/v1/big", None, None),
            ("GET", "/blob/v1/", None, None),
        ]
    )
    assert [r.status for r in replies] == [204, 413, 404, 413, 200, 201, 413, 413, 200, 200]
    assert replies[1].json["quota"] == "kv" and "quota" in replies[1].json["error"]
    assert replies[4].body == b"x" * 60
    assert replies[6].json["quota"] == "blob" and replies[7].json["quota"] == "blob"
    assert replies[8].body == b"b" * 800
    assert replies[9].json == {"keys": ["big"], "next": None}


# --- tokens, reachability, scope -----------------------------------------------------------


async def test_requests_need_the_containers_own_token(zk, pyagent):
    a = await deploy_probe(zk, pyagent)
    b = await deploy_probe(zk, pyagent)
    none, wrong, others, own = await b.calls(
        [
            ("GET", "/healthz", None, ""),
            ("GET", "/healthz", None, "x" * 43),
            ("GET", "/healthz", None, a.token),
            ("GET", "/healthz", None, None),
        ]
    )
    assert none.status == 401 and "missing bearer token" in none.json["error"]
    assert wrong.status == 401 and others.status == 401 and "wrong" in others.json["error"]
    assert own.status == 200
    assert a.token != b.token and len(a.token) >= 43  # 32 random bytes, base64


async def test_a_container_cannot_reach_another_containers_provider(zk, pyagent):
    a = await deploy_probe(zk, pyagent)
    b = await deploy_probe(zk, pyagent)
    a_address, b_address = await a.provider_address(), await b.provider_address()
    assert await b.connect(b_address, 9000) == "open"
    assert await b.connect(a_address, 9000) != "open"
    assert await a.connect(a_address, 9000) == "open"
    # the provider binds only its container's address: not loopback, not the node's address
    for host in ("127.0.0.1", pyagent.config.node_ip):
        with pytest.raises(OSError):
            await asyncio.open_connection(host, 9000)


async def test_functions_of_one_group_share_data_and_other_groups_do_not(zk, storage_agent):
    group = str(uuid.uuid4())
    a = await deploy_probe(zk, storage_agent, svc_group_id=group)
    b = await deploy_probe(zk, storage_agent, svc_group_id=group)
    c = await deploy_probe(zk, storage_agent)
    assert (await a.call("POST", "/kv/v1/shared", b"from a")).status == 204
    assert (await a.call("POST", "/blob/v1/doc", b"blob from a")).status == 201
    seen_by_b = await b.calls(
        [("GET", "/kv/v1/shared", None, None), ("GET", "/blob/v1/doc", None, None)]
    )
    assert [(r.status, r.body) for r in seen_by_b] == [(200, b"from a"), (200, b"blob from a")]
    seen_by_c = await c.calls(
        [("GET", "/kv/v1/shared", None, None), ("GET", "/blob/v1/", None, None)]
    )
    assert seen_by_c[0].status == 404
    assert seen_by_c[1].json == {"keys": [], "next": None}


# --- the provider process --------------------------------------------------------------------


async def test_provider_killed_comes_back_with_its_data_and_survives_agent_restart(zk, pynode):
    first = await start_agent(pynode)
    try:
        probe = await deploy_probe(zk, first)
        assert (await probe.call("POST", "/kv/v1/durable", b"kept")).status == 204
        killed = probe.provider_pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)

        async def restarted() -> bool:
            pid = probe.provider_pid
            return pid is not None and pid != killed

        await eventually(restarted, timeout=20, what="a new provider")
        reply = await eventually(
            lambda: _answered(probe.call("GET", "/kv/v1/durable")), timeout=20, what="answers"
        )
        assert reply.body == b"kept"
        before = probe.provider_pid
    finally:
        await first.stop()
    second = await start_agent(pynode)
    try:
        probe.agent = second
        reply = await eventually(
            lambda: _answered(probe.call("GET", "/kv/v1/durable")), timeout=20, what="adopted"
        )
        assert reply.body == b"kept"
        assert probe.provider_pid == before  # adopted, not restarted
    finally:
        await second.stop()


async def _answered(call) -> Reply | None:
    """The reply if the call went through and got a 200; None while the agent or the
    provider is not ready yet."""
    try:
        reply = await call
    except AssertionError:  # the agent did not run the probe (not adopted yet)
        return None
    return reply if reply.status == 200 else None


async def test_removing_the_function_stops_its_provider(zk, pyagent):
    probe = await deploy_probe(zk, pyagent)
    pid = probe.provider_pid
    assert pid is not None
    await operations.delete_function(zk, probe.fid)

    def gone() -> bool:
        return not procs.running(pid) and not probe.directory.exists()

    await eventually(gone, timeout=30, what="provider stopped and its files removed")


def _tcp_peers(pid: int) -> set[int]:
    """Remote ports of the TCP connections process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[2].split(":")[1], 16))
    return ports


async def test_a_provider_runs_unprivileged_in_its_cgroup_and_holds_no_cluster_key(
    zk, pynode, zk_server
):
    import pwd
    import shutil
    import tempfile

    from bismuth_agent.cgroups import Cgroup
    from bismuth_core.secrets import SecretBox, load_cluster_key

    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="bismuth-provider-"))
    work.chmod(0o711)  # as /etc and /var/lib: paths any user may walk
    key = KEY_TEXT  # the session's cluster key: the agent's credential derives from it
    key_file = work / "cluster.key"
    key_file.write_text(key)
    key_file.chmod(0o600)  # root's, as the deploy installs it
    config = dataclasses.replace(
        pynode,
        provider_user="nobody",
        provider_storage=f"local://{work}/data",
        cluster_key_file=str(key_file),
    )
    running = await start_agent(config)
    try:
        probe = await deploy_probe(zk, running)
        box = SecretBox(load_cluster_key(key))
        await operations.set_secret(zk, probe.fid, "db", box.seal(probe.fid, "db", b"hunter2"))
        reply = await probe.call("GET", "/secrets/v1/db")
        assert (reply.status, reply.body) == (200, b"hunter2")  # the agent opened it
        pid = probe.provider_pid
        assert pid is not None
        status = Path(f"/proc/{pid}/status").read_text()
        assert status.split("Uid:")[1].split()[:4] == [str(nobody.pw_uid)] * 4
        assert status.split("Groups:")[1].split("\n")[0].split() == []
        assert "NoNewPrivs:\t1" in status
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert key.encode() not in environ
        assert b"CLUSTER_KEY" not in environ and b"ZOOKEEPER" not in environ
        as_provider = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
        read = subprocess.run(
            [*as_provider, "--clear-groups", "cat", str(key_file)], capture_output=True, text=True
        )
        assert read.returncode != 0 and "Permission denied" in read.stderr
        zk_port = int(zk_server.hosts.rsplit(":", 1)[1])
        assert zk_port not in _tcp_peers(pid)  # no ZooKeeper session of its own
        cgroup = Cgroup(f"{config.cgroup_root}/providers/{probe.cid}")
        assert pid in cgroup.pids()
        assert cgroup.memory_limit() == config.provider_memory
        # only that very process may ask the agent: the token alone is not enough
        socket_path = Path(config.state_dir) / "providers.sock"
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(
                "http://agent/secrets/db", headers={"Authorization": f"Bearer {probe.token}"}
            ) as r,
        ):
            assert r.status == 403
            assert b"hunter2" not in await r.read()
    finally:
        await running.stop()
        end_providers(Path(config.state_dir))
        shutil.rmtree(work, ignore_errors=True)


# --- secrets -------------------------------------------------------------------------------


async def test_secrets_set_through_the_api_are_read_inside(
    zk, pynode, zk_server, zk_env, cluster_key_file
):
    from bismuth_api.config import ApiConfig
    from tests.support.apiserver import Api

    running = await start_agent(pynode)
    config = ApiConfig(
        zookeeper=zk_server.hosts, zookeeper_env=zk_env, cluster_key_file=cluster_key_file
    )
    api = Api(config)
    await api.start()
    try:
        probe = await deploy_probe(zk, running)
        async with aiohttp.ClientSession(headers=api.admin) as http:
            url = f"{api.url}/function/{probe.fid}/secrets/db-password"
            async with http.put(url, data=b"hunter2") as resp:
                assert resp.status == 204, await resp.text()
        found, missing, bad = await probe.calls(
            [
                ("GET", "/secrets/v1/db-password", None, None),
                ("GET", "/secrets/v1/nothing", None, None),
                ("GET", "/secrets/v1/..", None, None),
            ]
        )
        assert (found.status, found.body) == (200, b"hunter2")
        assert missing.status == 404
        assert bad.status in (400, 404)
        log = (probe.directory / "provider.log").read_text()
        assert "hunter2" not in log and probe.token not in log
    finally:
        await api.stop()
        await running.stop()


async def test_a_wrong_cluster_key_is_an_error_not_garbage(zk, pynode):
    running = await start_agent(pynode)
    try:
        probe = await deploy_probe(zk, running)
        # a value sealed with a key that is not the cluster's (a restored backup of another
        # cluster, say): stored by one who may write the tree, it still does not open here
        other = SecretBox(load_cluster_key(generate_cluster_key()))
        sealed = other.seal(probe.fid, "token", b"s3cret")
        await operations.set_secret(zk, probe.fid, "token", sealed)
        reply = await probe.call("GET", "/secrets/v1/token")
        assert reply.status == 503 and "key" in reply.json["error"]
        assert b"s3cret" not in reply.body
    finally:
        await running.stop()


# --- from another host ---------------------------------------------------------------------

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close()
    print("open")
except OSError as exc:
    print(type(exc).__name__)
"""


class Outsider:
    """A network namespace routed to this host through a veth pair: another host's view."""

    def __init__(self, route: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.netns, self.outer, inner = f"po{tag}", f"vpo{tag}", f"vpi{tag}"
        octet = 1 + os.getpid() % 250
        network = f"10.254.{octet}"
        for argv in (
            ["netns", "add", self.netns],
            ["link", "add", self.outer, "type", "veth", "peer", "name", inner],
            ["link", "set", inner, "netns", self.netns],
            ["addr", "add", f"{network}.1/30", "dev", self.outer],
            ["link", "set", self.outer, "up"],
            ["-n", self.netns, "addr", "add", f"{network}.2/30", "dev", inner],
            ["-n", self.netns, "link", "set", inner, "up"],
            ["-n", self.netns, "link", "set", "lo", "up"],
            ["-n", self.netns, "route", "add", route, "via", f"{network}.1"],
        ):
            self._run(["ip", *argv])

    @staticmethod
    def _run(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def connect(self, host: str, port: int) -> str:
        argv = ["ip", "netns", "exec", self.netns, "python3", "-c", CONNECT, host, str(port)]
        return (await asyncio.to_thread(self._run, argv)).strip()

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)


async def test_another_host_cannot_reach_a_provider(zk, pyagent):
    probe = await deploy_probe(zk, pyagent)
    address = await probe.provider_address()
    outsider = Outsider(pyagent.config.network_pool)
    # the control: a listener of the test's own on the same address, another port
    server = await asyncio.start_server(lambda r, w: w.close(), address, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await outsider.connect(address, port) == "open"  # routed to this host
        assert await outsider.connect(address, 9000) != "open"  # but the provider is not
        assert (await probe.call("GET", "/healthz")).status == 200
    finally:
        server.close()
        await server.wait_closed()
        outsider.remove()


async def test_a_provider_that_cannot_start_fails_the_container_and_leaves_nothing(zk, node):
    running = await start_agent(dataclasses.replace(node, provider_command=("/bin/false",)))
    try:
        fid = await operations.create_function(zk, httpd())

        async def failed() -> bool:
            return (await statuses(zk, fid)) == [ContainerStatus.FAILED]

        await eventually(failed, timeout=30, what="Failed")
        (backend,) = (await cluster.read_function(zk, fid)).backends
        _status, body, _ = await get(f"{running.url}/logs/{backend.container_id}")
        assert "provider exited at start" in body

        async def clean() -> bool:  # between two attempts of the restart backoff
            containers = await running.ctrd.containers.list()
            links = await running.runtime.network.list()
            attached = await running.runtime.firewall.attached()
            return not containers and not links and not attached

        await eventually(clean, timeout=30, what="no container, veth or firewall element")
    finally:
        await running.stop()


async def test_providers_can_run_as_an_unprivileged_user(zk, pynode):
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="bismuth-provider-"))
    work.chmod(0o711)  # a path the provider's user may walk, as /var/lib is
    config = dataclasses.replace(
        pynode, provider_user="nobody", provider_storage=f"local://{work}/data"
    )
    group = str(uuid.uuid4())  # data a provider running as root wrote before
    earlier = LocalStorage(work / "data", group, Quotas())
    await earlier.kv_set("old", b"from root")
    await earlier.close()
    running = await start_agent(config)
    try:
        probe = await deploy_probe(zk, running, svc_group_id=group)
        set_, got, old = await probe.calls(
            [
                ("POST", "/kv/v1/k", b"v", None),
                ("GET", "/kv/v1/k", None, None),
                ("GET", "/kv/v1/old", None, None),
            ]
        )
        assert (set_.status, got.status, got.body) == (204, 200, b"v")
        assert (old.status, old.body) == (200, b"from root")
        pid = probe.provider_pid
        assert pid is not None
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
        assert uids == [str(nobody.pw_uid)] * 4
        group_dir = work / "data" / group
        assert all(p.stat().st_uid == nobody.pw_uid for p in [group_dir, *group_dir.rglob("*")])
        assert (probe.directory / "token").stat().st_uid == 0  # the token stays root's
    finally:
        await running.stop()
        end_providers(Path(config.state_dir))
        shutil.rmtree(work, ignore_errors=True)
