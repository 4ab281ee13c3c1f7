"""What bismuthfe adds to a request: requests/s and p50/p99 latency, direct vs. through it.

Starts its own ZooKeeper (Debian's package) on a free loopback port, a stand-in agent
(tests/support/standin.py) in its own process, one function routed to ``bench.test``, and a
real ``bismuthfe`` process. Then, at concurrency 1, 16 and 64, a load generator in a separate
process (``wrk`` if installed, else an aiohttp client in a subprocess) calls

- direct:   http://<agent>/invoke/<cid>/hello            (the agent's URL, no frontend)
- frontend: http://<frontend>/hello  with Host: bench.test

for a fixed time each, and prints one table with the ratios. Figures only: never passes or
fails. Every process shares the machine's cores, so absolute numbers depend on the host.

    .venv/bin/python bench/fe_overhead.py [--seconds 4] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bismuth_core import cluster, layout, operations  # noqa: E402
from bismuth_core.credentials import (  # noqa: E402
    AGENT_HEADER,
    cluster_credentials,
    frontend_credentials,
    writer_access,
)
from bismuth_core.definition import parse_definition  # noqa: E402
from bismuth_core.layout import ContainerStatus  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from tests.support.clusterkey import ACCESS, write_key_files  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

HOST = "bench.test"
AGENT_IP = "127.0.0.1"
ENV = "bench"


@dataclass(frozen=True)
class Cell:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


# --- processes under test -------------------------------------------------------------


async def run_standin(zookeeper: str, env: str, ip: str, port: int, key_file: str) -> None:
    """Child process: one stand-in agent until SIGTERM, with the cluster's credentials."""
    from tests.support.standin import StandInAgent

    credentials = cluster_credentials(file=key_file)
    agent = StandInAgent(
        zookeeper,
        env,
        ip,
        port,
        credentials=credentials.frontend,
        access=writer_access(credentials),
    )
    await agent.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await agent.stop()


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("BENCH_STDERR", os.devnull), "ab"),
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for(url: str, headers: dict[str, str], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer 200 within {timeout}s")
            await asyncio.sleep(0.1)


async def wait_alive(zk: ZooKeeper, ip: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await zk.exists(layout.alive_path(ip)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stand-in agent on {ip} never announced itself")
        await asyncio.sleep(0.05)


async def deploy(zk: ZooKeeper) -> uuid.UUID:
    definition = parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": 0.5,
            "memory": 64 << 20,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
            "max_instances": 1,
            "routes": [{"hostname": HOST}],
        }
    )
    fid = await operations.create_function(zk, definition)
    deadline = time.monotonic() + 30
    while True:
        view = await cluster.read_function(zk, fid)
        statuses = await cluster.read_statuses(zk, view.backends)
        if statuses and all(s == ContainerStatus.RUNNING for s in statuses.values()):
            return view.backends[0].container_id
        if time.monotonic() > deadline:
            raise TimeoutError("the stand-in never marked the container Running")
        await asyncio.sleep(0.05)


# --- load generation ------------------------------------------------------------------


Headers = dict[str, str]


def measure(url: str, headers: Headers, concurrency: int, seconds: float) -> Cell:
    if shutil.which("wrk"):
        return measure_wrk(url, headers, concurrency, seconds)
    return measure_python(url, headers, concurrency, seconds)


def measure_wrk(url: str, headers: Headers, concurrency: int, seconds: float) -> Cell:
    args = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(map(int, sockets.groups())) if sockets else 0
    )
    return Cell(rps, _wrk_percentile(out, "50%"), _wrk_percentile(out, "99%"), errors)


def _wrk_percentile(out: str, label: str) -> float:
    match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {label} latency in wrk output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


def measure_python(url: str, headers: Headers, concurrency: int, seconds: float) -> Cell:
    """The fallback generator: this script again, in another process (its own event loop)."""
    args = [sys.executable, __file__, "--load", url, "--concurrency", str(concurrency)]
    args += ["--seconds", str(seconds), "--headers", json.dumps(headers)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60)
    return Cell(**json.loads(out.stdout))


async def python_load(url: str, headers: Headers, concurrency: int, seconds: float) -> Cell:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    async with http.get(url) as resp:
                        await resp.read()
                        errors += resp.status != 200
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    cuts = statistics.quantiles(latencies, n=100)
    return Cell(len(latencies) / elapsed, cuts[49] * 1000, cuts[98] * 1000, errors)


# --- the run --------------------------------------------------------------------------


def table(rows: list[tuple[int, Cell, Cell]]) -> str:
    lines = [
        f"{'conc':>4} | {'direct req/s':>12} {'fe req/s':>10} {'ratio':>6} | "
        f"{'p50 direct':>10} {'p50 fe':>8} {'ratio':>6} | "
        f"{'p99 direct':>10} {'p99 fe':>8} {'ratio':>6} | errors d/fe",
    ]
    lines.append("-" * len(lines[0]))
    for conc, direct, fe in rows:
        lines.append(
            f"{conc:>4} | {direct.requests_per_s:>12.0f} {fe.requests_per_s:>10.0f} "
            f"{fe.requests_per_s / direct.requests_per_s:>6.2f} | "
            f"{direct.p50_ms:>8.2f}ms {fe.p50_ms:>6.2f}ms {fe.p50_ms / direct.p50_ms:>6.2f} | "
            f"{direct.p99_ms:>8.2f}ms {fe.p99_ms:>6.2f}ms {fe.p99_ms / direct.p99_ms:>6.2f} | "
            f"{direct.errors}/{fe.errors}"
        )
    return "\n".join(lines)


async def bench(seconds: float, levels: list[int]) -> None:
    server = ZooKeeperServer()
    server.start()
    keys = tempfile.mkdtemp(prefix="bismuth-bench-keys-")
    procs: list[subprocess.Popen[bytes]] = []
    zk = ZooKeeper(server.hosts, ENV, access=ACCESS)
    try:
        await zk.start()
        await operations.bootstrap(zk)
        await operations.provision(zk, AGENT_IP)
        agent_port, fe_port, admin_port = free_port(), free_port(), free_port()
        cluster_key, fe_key = write_key_files(Path(keys))
        agent_auth = {AGENT_HEADER: frontend_credentials(str(fe_key)).agent}
        procs.append(
            spawn(
                [
                    sys.executable,
                    __file__,
                    "--standin",
                    server.hosts,
                    "--agent-port",
                    str(agent_port),
                    "--cluster-key-file",
                    str(cluster_key),
                ]
            )
        )
        await wait_alive(zk, AGENT_IP)
        cid = await deploy(zk)
        procs.append(
            spawn(
                [
                    str(Path(sys.executable).parent / "bismuthfe"),
                    "--zookeeper",
                    server.hosts,
                    "--zookeeper-env",
                    ENV,
                    "--bind",
                    f"127.0.0.1:{fe_port}",
                    "--admin-bind",
                    f"127.0.0.1:{admin_port}",
                    "--log-level",
                    "warning",
                ],
                env={
                    "BISMUTH_AGENT_PORT": str(agent_port),
                    "BISMUTH_FRONTEND_KEY_FILE": str(fe_key),
                },
            )
        )
        direct = f"http://{AGENT_IP}:{agent_port}/invoke/{cid}/hello"
        through = f"http://127.0.0.1:{fe_port}/hello"
        await wait_for(direct, agent_auth, "stand-in agent")
        await wait_for(through, {"Host": HOST}, "bismuthfe")
        generator = "wrk (1 thread)" if shutil.which("wrk") else "aiohttp client subprocess"
        print(f"load generator: {generator}; {seconds:g}s per cell; cores: {os.cpu_count()}")
        rows = []
        for conc in levels:
            measure(direct, agent_auth, conc, 1)  # warm-up; as the frontend calls it
            d = measure(direct, agent_auth, conc, seconds)
            measure(through, {"Host": HOST}, conc, 1)
            f = measure(through, {"Host": HOST}, conc, seconds)
            rows.append((conc, d, f))
        print(table(rows))
        print("ratio = frontend / direct (req/s: below 1 is slower; latency: above 1 is slower)")
    finally:
        for proc in reversed(procs):
            stop(proc)
        await zk.stop()
        server.cleanup()
        shutil.rmtree(keys, ignore_errors=True)


def main() -> None:
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "No chroot path exists")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--standin", metavar="ZOOKEEPER", help=argparse.SUPPRESS)
    parser.add_argument("--agent-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cluster-key-file", help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--headers", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.standin:
        asyncio.run(
            run_standin(args.standin, ENV, AGENT_IP, args.agent_port, args.cluster_key_file)
        )
    elif args.load:
        headers = json.loads(args.headers)
        cell = asyncio.run(python_load(args.load, headers, int(args.concurrency), args.seconds))
        print(json.dumps(cell.__dict__))
    else:
        asyncio.run(bench(args.seconds, [int(c) for c in args.concurrency.split(",")]))


if __name__ == "__main__":
    main()
