"""Start latency and the request path of real containers under bismuthd.

Starts its own ZooKeeper, a private containerd and a real ``bismuthd`` process, with the
base image ``bismuth.local/python:3.11`` (built into ``var/images/`` if missing). Then, as
figures only (never pass or fail):

1. start latency: container znode created → status ``Running`` (Server mode,
   ``python3 -m http.server``), p50 and p99 over N runs; next to ``ctr run --rm`` of the same
   image running ``python3 -c pass``, measured in the same script;
2. the agent's proxy: requests/s and p50/p99 through the agent's ``/invoke/<container>``
   (the path of Executable-mode functions; Server-mode traffic goes from the frontend's
   nginx to the container straight, see ``fe_overhead.py``) versus straight to the
   container's address, at concurrency 1, 16 and 64.

    .venv/bin/python bench/agent_paths.py [--runs 20] [--seconds 4] [--concurrency 1,16,64]

Run as root. Every process shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import Cell, in_work_dir, measure, spawn, stop, wait_for  # noqa: E402

from bismuth_agent.config import AgentConfig  # noqa: E402
from bismuth_agent.containerd.client import ContainerdClient  # noqa: E402
from bismuth_agent.containerd.oci import import_oci_archive  # noqa: E402
from bismuth_agent.network import AllocationStore, Firewall  # noqa: E402
from bismuth_agent.service import network_settings  # noqa: E402
from bismuth_core import cluster, layout, operations  # noqa: E402
from bismuth_core.definition import parse_definition  # noqa: E402
from bismuth_core.layout import ContainerStatus  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from tests.support.clusterkey import ACCESS, AGENT_AUTH, write_key_files  # noqa: E402
from tests.support.containerd import ContainerdServer  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

IMAGE = "bismuth.local/python:3.11"
ARCHIVE = ROOT / "var" / "images" / "python-3.11.oci.tar"
NODE = "127.0.77.1"
ENV = "benchagent"
POOL = "10.251.0.0/24"
HOST = "agent.bench"


def definition(hostname: str) -> object:
    return parse_definition(
        {
            "image": IMAGE,
            "cpu": 0.5,
            "memory": 128 << 20,
            "max_instances": 1,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server", "8000"], 8000]},
            "routes": [{"hostname": hostname}],
        }
    )


def quantiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    return cuts[49], cuts[98]


async def wait_status(zk: ZooKeeper, fid: uuid.UUID, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = await cluster.read_function(zk, fid)
        got = await cluster.read_statuses(zk, view.backends)
        if got and all(s == ContainerStatus.RUNNING for s in got.values()):
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"function {fid} not Running within {timeout}s")


async def wait_gone(ctrd: ContainerdClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while await ctrd.containers.list([f'labels."bismuth.node"=={NODE}']):
        if time.monotonic() > deadline:
            raise TimeoutError("containers not removed")
        await asyncio.sleep(0.05)


async def start_latency(zk: ZooKeeper, ctrd: ContainerdClient, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        began = time.perf_counter()
        fid = await operations.create_function(zk, definition(f"s{i}.bench"))
        await wait_status(zk, fid)
        times.append(time.perf_counter() - began)
        await operations.delete_function(zk, fid)
        await wait_gone(ctrd)
    return times


def ctr_runs(address: str, runs: int, fifo_dir: Path) -> list[float]:
    times = []
    for i in range(runs):
        began = time.perf_counter()
        subprocess.run(
            [
                "ctr",
                "-a",
                address,
                "-n",
                "bismuth",
                "run",
                "--rm",
                "--fifo-dir",
                str(fifo_dir),
                IMAGE,
                f"ctr-bench-{i}",
                "/usr/bin/python3",
                "-c",
                "pass",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        times.append(time.perf_counter() - began)
    return times


def table(rows: list[tuple[int, Cell, Cell]]) -> str:
    lines = [
        f"{'conc':>4} | {'direct req/s':>12} {'agent req/s':>11} {'ratio':>6} | "
        f"{'p50 direct':>10} {'p50 agent':>9} | {'p99 direct':>10} {'p99 agent':>9} | errors",
    ]
    lines.append("-" * len(lines[0]))
    for conc, direct, agent in rows:
        lines.append(
            f"{conc:>4} | {direct.requests_per_s:>12.0f} {agent.requests_per_s:>11.0f} "
            f"{agent.requests_per_s / direct.requests_per_s:>6.2f} | "
            f"{direct.p50_ms:>8.2f}ms {agent.p50_ms:>7.2f}ms | "
            f"{direct.p99_ms:>8.2f}ms {agent.p99_ms:>7.2f}ms | {direct.errors}/{agent.errors}"
        )
    return "\n".join(lines)


def ensure_image() -> None:
    if not ARCHIVE.exists():
        subprocess.run(
            [sys.executable, "-m", "bismuth_images.build", "--output", str(ARCHIVE)],
            check=True,
            cwd=ROOT,
        )


async def bench(args: argparse.Namespace, work: Path) -> None:
    ensure_image()
    zk_server = ZooKeeperServer()
    zk_server.start()
    ctrd_server = ContainerdServer()
    ctrd_server.start()
    procs = []
    try:
        zk = ZooKeeper(zk_server.hosts, ENV, access=ACCESS)
        await zk.start()
        await operations.bootstrap(zk)
        await operations.provision(zk, NODE)
        ctrd = ContainerdClient(ctrd_server.address, "bismuth")
        await ctrd.ensure_namespace()
        await import_oci_archive(ctrd, ARCHIVE)
        agent_port = free_port()
        cluster_key, _ = write_key_files(work / "keys")
        config = work / "agent.toml"
        config.write_text(
            f'zookeeper = "{zk_server.hosts}"\nzookeeper_env = "{ENV}"\nbind = "{NODE}"\n'
            f'port = {agent_port}\ncontainerd_address = "{ctrd_server.address}"\n'
            f'state_dir = "{ctrd_server.shared}/bench-state"\nlog_dir = "{work}/logs"\n'
            f'cgroup_parent = "{ctrd_server.cgroup_parent}/bench"\nnetwork_pool = "{POOL}"\n'
            f'log_level = "info"\ncluster_key_file = "{cluster_key}"\n'
        )
        procs.append(spawn([sys.executable, "-m", "bismuth_agent.main", "--config", str(config)]))
        deadline = time.monotonic() + 30
        while await zk.exists(layout.alive_path(NODE)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("agent not alive")
            await asyncio.sleep(0.1)

        await start_latency(zk, ctrd, 1)  # warm-up: the image's remapped snapshot is made once
        ours = await start_latency(zk, ctrd, args.runs)

        fid = await operations.create_function(zk, definition(HOST))
        await wait_status(zk, fid)
        (backend,) = (await cluster.read_function(zk, fid)).backends
        store = AllocationStore(
            work / "state" / "network" / "allocations.json", ipaddress.IPv4Network(POOL)
        )
        allocation = store.lookup(str(backend.container_id))
        assert allocation is not None
        direct = f"http://{allocation.container_address}:8000/"
        await wait_for(direct, {}, "the container directly")
        through = f"http://{NODE}:{agent_port}/invoke/{backend.container_id}/"
        await wait_for(through, AGENT_AUTH, "the container through the agent")
        rows = []
        for level in [int(c) for c in args.concurrency.split(",")]:
            d = await asyncio.to_thread(measure, direct, {}, level, args.seconds)
            a = await asyncio.to_thread(measure, through, AGENT_AUTH, level, args.seconds)
            rows.append((level, d, a))
        print("\nrequest path: direct to the container vs the agent's /invoke -> container")
        print(table(rows))
        await operations.delete_function(zk, fid)
        await wait_gone(ctrd)
        theirs = await asyncio.to_thread(ctr_runs, ctrd_server.address, args.runs, work / "fifo")
        (p50, p99), (c50, c99) = quantiles(ours), quantiles(theirs)
        print(f"\nstart latency over {args.runs} runs (seconds)")
        print(f"  znode -> Running (agent)         p50 {p50:.3f}  p99 {p99:.3f}")
        print(f"  ctr run --rm python3 -c pass     p50 {c50:.3f}  p99 {c99:.3f}")
        print(f"  ratio agent / ctr run            p50 {p50 / c50:.2f}  p99 {p99 / c99:.2f}")
        await zk.stop()
        await ctrd.close()
    finally:
        for proc in reversed(procs):
            stop(proc)
        # its sweep runs an event loop of its own: not on this one
        await asyncio.to_thread(ctrd_server.cleanup)
        zk_server.cleanup()
        await Firewall(network_settings(AgentConfig(bind=NODE, network_pool=POOL))).remove_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args()
    in_work_dir(lambda work: bench(args, work))


if __name__ == "__main__":
    main()
