"""The provider's key/value and blob operations as a container sees them, next to the disk.

Starts its own ZooKeeper, a private containerd and a real ``bismuthd`` process whose
providers keep their data with the ``local`` backend in this run's work directory, with the
base image ``bismuth.local/python:3.11`` (built into ``var/images/`` if missing). Then, as
figures only (never pass or fail):

1. from inside a container: one Executable-mode function whose program (Python, in the base
   image), invoked once through the agent's ``/invoke/<cid>``, runs each operation for
   ``--seconds`` in ``--concurrency`` threads, each over ONE keep-alive connection to
   ``http://169.254.169.254:9000``: kv set (``POST`` of 100-byte values, a new key each
   time), kv get (``GET``, cycling over 100 keys), blob put (``PUT`` replacing one 1 MiB
   blob per thread, created once with ``POST``) and blob get (``GET`` of a 1 MiB blob);
2. on the host, directly, in a directory on the same filesystem as the provider's data: the
   same operations on SQLite (WAL, ``synchronous=FULL``, one ``BEGIN IMMEDIATE``
   transaction per set, as ``bismuth_provider/storage/local.py``) and on files (1 MiB
   written to a temporary file, fsynced, renamed over the blob, directory fsynced; read
   back whole).

Both sides run the very same loop (``run_loops``; its source is part of the container's
program) and report ops/s and p50/p99 latency; the table shows them side by side.

    .venv/bin/python bench/provider_ops.py [--seconds 3] [--concurrency 1]

Run as root. Every process shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_paths import ARCHIVE, IMAGE, ensure_image, wait_status  # noqa: E402
from loadgen import spawn, stop  # noqa: E402

from bismuth_agent.config import AgentConfig  # noqa: E402
from bismuth_agent.containerd.client import ContainerdClient  # noqa: E402
from bismuth_agent.containerd.oci import import_oci_archive  # noqa: E402
from bismuth_agent.network import Firewall  # noqa: E402
from bismuth_agent.service import network_settings  # noqa: E402
from bismuth_core import cluster, layout, operations  # noqa: E402
from bismuth_core.definition import FunctionDefinition, parse_definition  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from bismuth_provider.storage.local import SCHEMA  # noqa: E402
from tests.support.agenthost import end_providers  # noqa: E402
from tests.support.clusterkey import ACCESS, AGENT_AUTH, write_key_files  # noqa: E402
from tests.support.containerd import ContainerdServer  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

NODE = "127.0.78.1"
ENV = "benchprovider"
POOLS = "10.255.0.0/16"  # a free /24 of it is picked at start
KV_KEYS = 100  # kv get cycles over this many keys per thread
VALUE_BYTES = 100
BLOB_BYTES = 1 << 20
OPERATIONS = ("kv set", "kv get", "blob put", "blob get")
HOST_SIDE = {
    "kv set": "SQLite INSERT, one txn",
    "kv get": "SQLite SELECT",
    "blob put": "write+fsync+rename+dir fsync",
    "blob get": "open+read",
}

Figures = dict[str, float]


def run_loops(
    handles: list[Any],
    prepare: Callable[[Any, int], None] | None,
    step: Callable[[Any, int, int], None],
    seconds: float,
) -> Figures:
    """Run ``step(handle, thread, i)`` in a thread per handle for ``seconds``; the figures.

    ``prepare(handle, thread)`` runs first, untimed; all threads then start together.
    """
    latencies: list[list[float]] = [[] for _ in handles]
    failures: list[BaseException] = []
    began: list[float] = []
    barrier = threading.Barrier(len(handles), action=lambda: began.append(time.perf_counter()))

    def loop(t: int) -> None:
        try:
            if prepare is not None:
                prepare(handles[t], t)
            barrier.wait()
            deadline, i = began[0] + seconds, 0
            while (now := time.perf_counter()) < deadline:
                step(handles[t], t, i)
                latencies[t].append(time.perf_counter() - now)
                i += 1
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    every = [x for own in latencies for x in own]
    cuts = statistics.quantiles(every, n=100)
    return {
        "ops": len(every),
        "ops_per_s": len(every) / (time.perf_counter() - began[0]),
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
    }


# --- inside the container ------------------------------------------------------------------

CLIENT = r"""
params = json.load(sys.stdin)
auth = {"Authorization": "Bearer " + os.environ["BISMUTH_AUTH"]}
value, blob = os.urandom(params["value_bytes"]), os.urandom(params["blob_bytes"])


def call(conn, method, path, body, want, size=None):
    conn.request(method, path, body=body, headers=auth)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != want or (size is not None and len(data) != size):
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")


def kv_fill(conn, t):
    for k in range(params["kv_keys"]):
        call(conn, "POST", f"/kv/v1/get/{t}/{k}", value, 204)


OPS = {
    "kv set": (None, lambda c, t, i: call(c, "POST", f"/kv/v1/set/{t}/{i}", value, 204)),
    "kv get": (
        kv_fill,
        lambda c, t, i: call(
            c, "GET", f"/kv/v1/get/{t}/{i % params['kv_keys']}", None, 200, len(value)
        ),
    ),
    "blob put": (
        lambda c, t: call(c, "POST", f"/blob/v1/put/{t}", blob, 201),
        lambda c, t, i: call(c, "PUT", f"/blob/v1/put/{t}", blob, 200),
    ),
    "blob get": (
        lambda c, t: call(c, "POST", f"/blob/v1/get/{t}", blob, 201),
        lambda c, t, i: call(c, "GET", f"/blob/v1/get/{t}", None, 200, len(blob)),
    ),
}
conns = [
    http.client.HTTPConnection("169.254.169.254", 9000, timeout=60)
    for _ in range(params["concurrency"])
]
figures = {name: run_loops(conns, *OPS[name], params["seconds"]) for name in params["operations"]}
json.dump(figures, sys.stdout)
"""


def container_program() -> str:
    """The container's program: the shared loop, then the HTTP client around it."""
    head = (
        "from __future__ import annotations\n"
        "import http.client, json, os, statistics, sys, threading, time\n"
    )
    return head + inspect.getsource(run_loops) + CLIENT


def probe_definition(cpu: float) -> FunctionDefinition:
    return parse_definition(
        {
            "image": IMAGE,
            "cpu": cpu,
            "memory": 256 << 20,
            "max_instances": 1,
            "invoke_mode": {"Executable": ["/usr/bin/python3", "-c", container_program()]},
            "routes": [],
        }
    )


async def from_container(
    zk: ZooKeeper, agent_url: str, args: argparse.Namespace, timeout: float
) -> dict[str, Figures]:
    """Deploy the probe, invoke it once, remove it; its figures per operation."""
    fid = await operations.create_function(zk, probe_definition(args.cpu))
    try:
        await wait_status(zk, fid)
        (backend,) = (await cluster.read_function(zk, fid)).backends
        params = {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "operations": OPERATIONS,
            "kv_keys": KV_KEYS,
            "value_bytes": VALUE_BYTES,
            "blob_bytes": BLOB_BYTES,
        }
        url = f"{agent_url}/invoke/{backend.container_id}"
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout), headers=AGENT_AUTH
            ) as http,
            http.post(url, data=json.dumps(params)) as resp,
        ):
            body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"invoke answered {resp.status}: {body.decode(errors='replace')}")
        return json.loads(body)
    finally:
        await operations.delete_function(zk, fid)


# --- on the host, directly -----------------------------------------------------------------


def open_sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def sqlite_set(db: sqlite3.Connection, key: str, value: bytes) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
    db.execute("COMMIT")


def sqlite_get(db: sqlite3.Connection, key: str, size: int) -> None:
    row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    if row is None or len(row[0]) != size:
        raise RuntimeError(f"kv {key!r}: {row!r}")


def file_put(root: Path, name: str, content: bytes) -> None:
    """As the local backend: temp file in ``tmp/``, fsync, rename into ``blobs/``, dir fsync."""
    fd, tmp = tempfile.mkstemp(dir=root / "tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, root / "blobs" / name)
    dir_fd = os.open(root / "blobs", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_get(root: Path, name: str, size: int) -> None:
    with open(root / "blobs" / name, "rb") as handle:
        if len(handle.read()) != size:
            raise RuntimeError(f"blob {name}: wrong size")


def direct(root: Path, seconds: float, concurrency: int) -> dict[str, Figures]:
    """The same operations straight on SQLite and the filesystem under ``root``."""
    for sub in ("tmp", "blobs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    value, blob = os.urandom(VALUE_BYTES), os.urandom(BLOB_BYTES)
    schema = open_sqlite(root / "data.sqlite3")
    schema.executescript(SCHEMA)
    schema.close()
    dbs = [open_sqlite(root / "data.sqlite3") for _ in range(concurrency)]
    roots = [root] * concurrency

    def kv_fill(db: sqlite3.Connection, t: int) -> None:
        for k in range(KV_KEYS):
            sqlite_set(db, f"get/{t}/{k}", value)

    figures = {
        "kv set": run_loops(
            dbs, None, lambda d, t, i: sqlite_set(d, f"set/{t}/{i}", value), seconds
        ),
        "kv get": run_loops(
            dbs,
            kv_fill,
            lambda d, t, i: sqlite_get(d, f"get/{t}/{i % KV_KEYS}", VALUE_BYTES),
            seconds,
        ),
        "blob put": run_loops(
            roots,
            lambda r, t: file_put(r, f"put-{t}", blob),
            lambda r, t, i: file_put(r, f"put-{t}", blob),
            seconds,
        ),
        "blob get": run_loops(
            roots,
            lambda r, t: file_put(r, f"get-{t}", blob),
            lambda r, t, i: file_get(r, f"get-{t}", BLOB_BYTES),
            seconds,
        ),
    }
    for db in dbs:
        db.close()
    return figures


# --- setup and report ----------------------------------------------------------------------


def free_pool() -> str:
    """A /24 of ``POOLS`` that no address on this machine is in."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    used = [
        ipaddress.IPv4Address(info["local"])
        for link in json.loads(out.stdout)
        for info in link.get("addr_info", [])
    ]
    for net in ipaddress.IPv4Network(POOLS).subnets(new_prefix=24):
        if not any(address in net for address in used):
            return str(net)
    raise RuntimeError(f"no free /24 in {POOLS}")


def agent_config(
    work: Path, zookeeper: str, ctrd: ContainerdServer, pool: str, port: int, exec_timeout: float
) -> Path:
    path = work / "agent.toml"
    path.write_text(
        f'zookeeper = "{zookeeper}"\nzookeeper_env = "{ENV}"\nbind = "{NODE}"\nport = {port}\n'
        f'containerd_address = "{ctrd.address}"\nstate_dir = "{ctrd.shared}/bench-state"\n'
        f'log_dir = "{work}/logs"\ncgroup_parent = "{ctrd.cgroup_parent}/bench"\n'
        f'network_pool = "{pool}"\nexec_timeout = {exec_timeout}\n'
        f'provider_storage = "local://{work}/data"\nlog_level = "warning"\n'
        f'provider_log_level = "warning"\ncluster_key_file = "{write_key_files(work)[0]}"\n'
    )
    return path


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout}s")
        await asyncio.sleep(0.05)


def table(ours: dict[str, Figures], theirs: dict[str, Figures]) -> str:
    head = (
        f"{'operation':<10} | {'from container: ops/s':>21} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'direct':<28} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7} | ratio ops/s  p50"
    )
    lines = [head, "-" * len(head)]
    for name in OPERATIONS:
        p, d = ours[name], theirs[name]
        lines.append(
            f"{name:<10} | {p['ops_per_s']:>21.0f} {p['p50_ms']:>7.3f} {p['p99_ms']:>7.3f} | "
            f"{HOST_SIDE[name]:<28} {d['ops_per_s']:>7.0f} {d['p50_ms']:>7.3f} "
            f"{d['p99_ms']:>7.3f} | {p['ops_per_s'] / d['ops_per_s']:>11.3f} "
            f"{p['p50_ms'] / d['p50_ms']:>4.1f}x"
        )
    return "\n".join(lines)


async def measure(
    args: argparse.Namespace,
    work: Path,
    zk_server: ZooKeeperServer,
    ctrd_server: ContainerdServer,
    pool: str,
) -> None:
    zk = ZooKeeper(zk_server.hosts, ENV, access=ACCESS)
    await zk.start()
    await operations.bootstrap(zk)
    await operations.provision(zk, NODE)
    async with ContainerdClient(ctrd_server.address, "bismuth") as ctrd:
        await ctrd.ensure_namespace()
        await import_oci_archive(ctrd, ARCHIVE)
    port = free_port()
    exec_timeout = len(OPERATIONS) * args.seconds + 60  # the run, plus each operation's setup
    config = agent_config(work, zk_server.hosts, ctrd_server, pool, port, exec_timeout)
    agent = spawn([sys.executable, "-m", "bismuth_agent.main", "--config", str(config)])
    try:
        await until(lambda: _exists(zk, layout.alive_path(NODE)), "agent not alive")
        ours = await from_container(zk, f"http://{NODE}:{port}", args, exec_timeout + 30)
        async with ContainerdClient(ctrd_server.address, "bismuth") as ctrd:
            await until(lambda: _no_containers(ctrd), "container not removed")
    finally:
        stop(agent)
        await zk.stop()
    same_fs = work / "direct"  # next to the provider's data dir: same filesystem
    theirs = await asyncio.to_thread(direct, same_fs, args.seconds, args.concurrency)
    print(
        f"\nprovider (local backend) from inside a container vs direct on the host; "
        f"{args.seconds:g} s per operation, concurrency {args.concurrency}, "
        f"container cpu {args.cpu:g}\nkv: {VALUE_BYTES}-byte values (set: a new key each "
        f"time); blob: {BLOB_BYTES >> 20} MiB (put: PUT replacing one existing key per loop)"
    )
    print(table(ours, theirs))
    print("ratio: provider / direct (ops/s; p50 latency)")


async def _exists(zk: ZooKeeper, path: str) -> bool:
    return await zk.exists(path) is not None


async def _no_containers(ctrd: ContainerdClient) -> bool:
    return not await ctrd.containers.list()


async def bench(args: argparse.Namespace, work: Path) -> None:
    ensure_image()
    pool = free_pool()
    zk_server, ctrd_server = ZooKeeperServer(), ContainerdServer()
    try:
        zk_server.start()
        ctrd_server.start()
        await measure(args, work, zk_server, ctrd_server, pool)
    finally:
        end_providers(work / "state")  # any the agent left running (it was stopped early)
        # its sweep runs an event loop of its own: not on this one
        await asyncio.to_thread(ctrd_server.cleanup)
        zk_server.cleanup()
        await Firewall(network_settings(AgentConfig(bind=NODE, network_pool=pool))).remove_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per operation")
    parser.add_argument("--concurrency", type=int, default=1, help="loops (threads) per side")
    parser.add_argument("--cpu", type=float, default=1.0, help="the container's cpu limit")
    args = parser.parse_args()
    if args.seconds <= 0 or args.concurrency < 1:
        parser.error("--seconds must be > 0 and --concurrency >= 1")
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bismuth-bench-"))
    work.chmod(0o711)
    try:
        asyncio.run(bench(args, work))
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    print(f"wall time {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
