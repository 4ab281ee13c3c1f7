"""Function creates per second through bismuth-api, with 10 and 100 stand-in nodes.

Starts its own ZooKeeper (Debian's package) on a free loopback port and a real
``bismuth-api`` process; stand-in nodes are provisioned znodes with an ``alive`` znode (as a
live agent keeps) and ample capacity. A client in this process posts creates (each with
max_instances replicas and its own hostname) at a fixed concurrency for a fixed time.
Baseline, in the same run: the same znodes written by bare kazoo multi-ops, no HTTP, no
validation, no scheduling. Prints figures; never passes or fails.

    .venv/bin/python bench/api_creates.py [--seconds 5] [--concurrency 8] [--replicas 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bismuth_core import layout, operations, tenancy
from bismuth_core.layout import ContainerRecord, NodeAlive
from bismuth_core.tokens import Scope
from bismuth_core.zk import ZooKeeper, create
from tests.support.apiserver import definition
from tests.support.clusterkey import ACCESS, write_key_files
from tests.support.zkserver import ZooKeeperServer, free_port


async def add_nodes(zk: ZooKeeper, count: int) -> None:
    for i in range(count):
        ip = f"10.{i // 250}.{i % 250}.1"  # names only: nothing is ever contacted
        await operations.provision(zk, ip)
        await zk.create(
            layout.alive_path(ip), NodeAlive(1024, 1 << 44, "bench").encode(), ephemeral=True
        )


async def wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("bismuth-api did not come up")
            await asyncio.sleep(0.1)


async def load(run: object, seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await run()  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def summary(name: str, latencies: list[float], seconds: float) -> tuple[str, float]:
    rate = len(latencies) / seconds
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    line = (
        f"{name:<34} {rate:>9.1f}/s   p50 {q[49] * 1000:7.2f} ms   "
        f"p99 {q[98] * 1000:7.2f} ms   n={len(latencies)}"
    )
    return line, rate


async def bench_nodes(
    server: ZooKeeperServer, nodes: int, args: argparse.Namespace, key_file: Path
) -> None:
    env = f"bench{uuid.uuid4().hex[:8]}"
    zk = ZooKeeper(server.hosts, env, access=ACCESS)
    await zk.start()
    await operations.bootstrap(zk)
    await add_nodes(zk, nodes)
    admin = (await tenancy.issue_token(zk, None, Scope.ADMIN))[1].text
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bismuth_api.main",
            "--zookeeper",
            server.hosts,
            "--zookeeper-env",
            env,
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "BISMUTH_CLUSTER_KEY_FILE": str(key_file)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url)
        failures = 0
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:

            async def create_one() -> None:
                nonlocal failures
                body = definition(
                    max_instances=args.replicas,
                    routes=[{"hostname": f"f{uuid.uuid4().hex[:12]}.bench"}],
                )
                async with http.post(url + "/function", data=json.dumps(body)) as resp:
                    await resp.read()
                    failures += resp.status != 200

            api_line, api_rate = summary(
                f"API creates, {nodes} nodes",
                await load(create_one, args.seconds, args.concurrency),
                args.seconds,
            )

        async def raw_one() -> None:
            fid = uuid.uuid4()
            backends = [layout.Backend(f"10.0.{i}.1", uuid.uuid4()) for i in range(args.replicas)]
            record = ContainerRecord(fid, 0.5, 128 << 20).encode()
            await zk.commit(
                [
                    create(layout.function_path(fid), json.dumps(definition()).encode()),
                    create(layout.backends_path(fid), layout.pack_backends(backends)),
                    *(
                        create(layout.container_path(b.ip, b.container_id), record)
                        for b in backends
                    ),
                    create(layout.route_path(f"r{fid.hex[:12]}.bench"), fid.bytes),
                ]
            )

        raw_line, raw_rate = summary(
            "baseline: bare kazoo multi-op",
            await load(raw_one, args.seconds, args.concurrency),
            args.seconds,
        )
        print(api_line + f"   failed={failures}")
        print(raw_line)
        print(f"{'ratio API / baseline':<34} {api_rate / raw_rate:>9.3f}")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        await zk.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    server = ZooKeeperServer()
    server.start()
    keys = Path(tempfile.mkdtemp(prefix="bismuth-bench-keys-"))
    try:
        print(
            f"concurrency {args.concurrency}, {args.replicas} replicas per function, "
            f"{args.seconds:g} s per measurement, {os.cpu_count()} cpus"
        )
        for nodes in (10, 100):
            await bench_nodes(server, nodes, args, write_key_files(keys)[0])
    finally:
        server.cleanup()
        shutil.rmtree(keys, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
