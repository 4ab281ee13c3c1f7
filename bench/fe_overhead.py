"""What the frontend adds to a request: one run, one container, one machine.

Starts its own ZooKeeper, a private containerd, a real ``bismuthd`` process, the frontend
as a deploy runs it (``bismuthfe-nginx`` and ``bismuthfe``) and one Server-mode function: a
small asyncio HTTP responder in the base image (cpu 1.0, built into ``var/images/`` if
missing). Then, at each concurrency, ``wrk`` (one thread) calls the same container

- direct:     http://<the container's address>:8080/
- product:    the frontend's nginx, Host: bench.test (route and container chosen in Lua
              from shared memory, connected to straight)
- two hops:   nginx -> nginx -> container, plain static ``proxy_pass`` with kept-alive
              upstream connections: the baseline a route-less two-proxy setup costs

and prints requests/s and p50/p99 latency of each, and the targets: the product path at
least 0.8x the two hops' requests/s at concurrency 16, and at most 1 ms of p99 added to
the direct path. The frontend's nginx runs as deployed, one worker per core (``--workers``);
each static nginx runs one. Figures only: it never passes or fails, and every process shares
the machine's cores.

    .venv/bin/python bench/fe_overhead.py [--seconds 5] [--concurrency 1,16,64] [--workers N]

Run as root, with ``wrk`` installed (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_paths import ARCHIVE, IMAGE, ensure_image, wait_status  # noqa: E402
from loadgen import Cell, generator, in_work_dir, measure, spawn, stop, wait_for  # noqa: E402

from bismuth_agent.config import AgentConfig  # noqa: E402
from bismuth_agent.containerd.client import ContainerdClient  # noqa: E402
from bismuth_agent.containerd.oci import import_oci_archive  # noqa: E402
from bismuth_agent.network import Firewall  # noqa: E402
from bismuth_agent.service import network_settings  # noqa: E402
from bismuth_core import cluster, layout, operations  # noqa: E402
from bismuth_core.definition import parse_definition  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from bismuth_fe.config import FrontendConfig  # noqa: E402
from tests.support.clusterkey import ACCESS, write_key_files  # noqa: E402
from tests.support.containerd import ContainerdServer  # noqa: E402
from tests.support.tomlconfig import write_config  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

BIN = Path(sys.executable).parent
NODE = "127.0.78.1"
ENV = "benchfe"
POOL = "10.251.1.0/24"
HOST = "bench.test"
PORT = 8080

# HTTP/1.1 keep-alive, one fixed answer: the container does as little as a server can.
RESPONDER = """
import asyncio
ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n"
async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "0.0.0.0", 8080, backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""

STATIC_NGINX = """
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream next {{ server {upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Row:
    concurrency: int
    direct: Cell
    product: Cell
    hops: Cell


def definition() -> object:
    return parse_definition(
        {
            "image": IMAGE,
            "cpu": 1.0,
            "memory": 128 << 20,
            "max_instances": 1,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-c", RESPONDER], PORT]},
            "routes": [{"hostname": HOST}],
        }
    )


def static_nginx(work: Path, name: str, port: int, upstream: str) -> list[str]:
    """The command of a plain nginx proxying 127.0.0.1:<port> to ``upstream``."""
    directory = work / name
    directory.mkdir(mode=0o755)
    conf = directory / "nginx.conf"
    conf.write_text(STATIC_NGINX.format(dir=directory, port=port, upstream=upstream))
    return ["/usr/sbin/nginx", "-e", "stderr", "-p", str(directory), "-c", str(conf)]


def agent_toml(
    work: Path, zookeeper: str, containerd: ContainerdServer, key_file: Path
) -> AgentConfig:
    config = AgentConfig(
        zookeeper=zookeeper,
        zookeeper_env=ENV,
        bind=NODE,
        port=free_port(),
        containerd_address=containerd.address,
        state_dir=f"{containerd.shared}/bench-state",  # mounts reach containerd's namespace
        log_dir=str(work / "logs"),
        cgroup_parent=f"{containerd.cgroup_parent}/benchfe",
        network_pool=POOL,
        cluster_key_file=str(key_file),
        log_level="warning",
    )
    write_config(config, work / "agent.toml")
    return config


def frontend_toml(
    work: Path, zookeeper: str, agent_port: int, workers: int, key_file: Path
) -> tuple[FrontendConfig, Path]:
    temp = work / "fe-tmp"
    temp.mkdir(mode=0o755)
    config = FrontendConfig(
        zookeeper=zookeeper,
        zookeeper_env=ENV,
        bind=f"127.0.0.1:{free_port()}",
        admin_bind=f"127.0.0.1:{free_port()}",
        agent_port=agent_port,
        run_dir=str(work / "fe-run"),
        temp_dir=str(temp),
        workers=workers,
        frontend_key_file=str(key_file),
        log_level="warning",
    )
    return config, write_config(config, work / "fe.toml")


async def container_endpoint(zk: ZooKeeper, fid: uuid.UUID) -> layout.ServingEndpoint:
    (backend,) = (await cluster.read_function(zk, fid)).backends
    got = await zk.get_or_none(layout.status_path(backend.ip, backend.container_id))
    endpoint = layout.decode_endpoint(got[0] if got else None)
    if endpoint is None:
        raise RuntimeError("the agent announced no endpoint for the container")
    return endpoint


async def run_paths(args: argparse.Namespace, work: Path, zk: ZooKeeper, procs: list) -> None:
    fid = await operations.create_function(zk, definition())
    await wait_status(zk, fid)
    endpoint = await container_endpoint(zk, fid)
    hop1, hop2 = free_port(), free_port()
    procs.append(spawn(static_nginx(work, "hop2", hop2, f"{endpoint.address}:{endpoint.port}")))
    procs.append(spawn(static_nginx(work, "hop1", hop1, f"127.0.0.1:{hop2}")))
    urls = {
        "direct": (f"http://{endpoint.address}:{endpoint.port}/", {}),
        "product": (f"http://127.0.0.1:{args.fe_port}/", {"Host": HOST}),
        "two hops": (f"http://127.0.0.1:{hop1}/", {}),
    }
    for name, (url, headers) in urls.items():
        await wait_for(url, headers, name)
    print(
        f"load generator: {generator()}; {args.seconds:g}s per cell; cores: {os.cpu_count()}; "
        f"frontend nginx workers: {args.workers or os.cpu_count()}"
    )
    rows = []
    for level in [int(c) for c in args.concurrency.split(",")]:
        cells = {}
        for name, (url, headers) in urls.items():
            await asyncio.to_thread(measure, url, headers, level, 1)  # warm-up
            cells[name] = await asyncio.to_thread(measure, url, headers, level, args.seconds)
        rows.append(Row(level, cells["direct"], cells["product"], cells["two hops"]))
    print(report(rows))


def report(rows: list[Row]) -> str:
    head = f"{'c':>3} | {'path':<8} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | errors"
    lines = [head, "-" * len(head)]
    for row in rows:
        for name, cell in (
            ("direct", row.direct),
            ("product", row.product),
            ("two hops", row.hops),
        ):
            lines.append(
                f"{row.concurrency:>3} | {name:<8} | {cell.requests_per_s:>8.0f} | "
                f"{cell.p50_ms:>7.2f} | {cell.p99_ms:>7.2f} | {cell.errors}"
            )
    lines.append("")
    for row in rows:
        ratio = row.product.requests_per_s / row.hops.requests_per_s
        added = row.product.p99_ms - row.direct.p99_ms
        lines.append(
            f"c={row.concurrency}: product / two hops = {ratio:.2f}x req/s (target >= 0.8 at "
            f"c=16); p99 added over direct = {added:+.2f} ms (target <= 1 ms)"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace, work: Path) -> None:
    ensure_image()
    zk_server = ZooKeeperServer()
    zk_server.start()
    ctrd_server = ContainerdServer()
    ctrd_server.start()
    procs: list = []
    try:
        zk = ZooKeeper(zk_server.hosts, ENV, access=ACCESS)
        await zk.start()
        await operations.bootstrap(zk)
        await operations.provision(zk, NODE)
        async with ContainerdClient(ctrd_server.address, "bismuth") as ctrd:
            await ctrd.ensure_namespace()
            await import_oci_archive(ctrd, ARCHIVE)
        cluster_key, frontend_key = write_key_files(work / "keys")
        agent = agent_toml(work, zk_server.hosts, ctrd_server, cluster_key)
        procs.append(spawn([str(BIN / "bismuthd"), "--config", str(work / "agent.toml")]))
        config, fe = frontend_toml(work, zk_server.hosts, agent.port, args.workers, frontend_key)
        args.fe_port = config.public_address()[1]
        procs.append(spawn([str(BIN / "bismuthfe-nginx"), "--config", str(fe)]))
        procs.append(spawn([str(BIN / "bismuthfe"), "--config", str(fe)]))
        deadline = time.monotonic() + 60
        while await zk.exists(layout.alive_path(NODE)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("agent not alive")
            await asyncio.sleep(0.1)
        await run_paths(args, work, zk, procs)
        await zk.stop()
    finally:
        for proc in reversed(procs):
            stop(proc)
        await asyncio.to_thread(ctrd_server.cleanup)
        zk_server.cleanup()
        await Firewall(network_settings(AgentConfig(bind=NODE, network_pool=POOL))).remove_all()


def main() -> None:
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "No chroot path exists")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--workers", type=int, default=0, help="the frontend's nginx workers (0: one per core)"
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("note: wrk is not installed (apt-get install wrk): the aiohttp fallback limits rates")
    in_work_dir(lambda work: bench(args, work))


if __name__ == "__main__":
    main()
