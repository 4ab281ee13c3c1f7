"""What checking API tokens costs: one trivial route with and without the token check.

Starts its own ZooKeeper (Debian's package) on a free loopback port, bootstraps an
environment and issues an admin token and a tenant token. Two aiohttp servers in this
process answer ``GET /ping`` with the same handler: one bare (the baseline), one behind
``bismuth-api``'s own authentication middleware and token cache (kazoo ``TreeCache`` over
``/token``, SHA-256 and a constant-time compare per request). A load generator in another
process (wrk, else this script's aiohttp client) measures both at each concurrency, in the
same run. For scale it also measures a real ``bismuth-api``'s ``GET /function/<id>`` (token
check, ownership, three ZooKeeper reads) and the token check alone, in-process. Prints
figures; never passes or fails.

    .venv/bin/python bench/api_auth.py [--seconds 4] [--concurrency 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Cell, measure  # noqa: E402
from bismuth_api.auth import TokenCache, auth_middleware  # noqa: E402
from bismuth_api.config import ApiConfig  # noqa: E402
from bismuth_core import layout, operations, tenancy  # noqa: E402
from bismuth_core.definition import parse_definition  # noqa: E402
from bismuth_core.layout import NodeAlive  # noqa: E402
from bismuth_core.tokens import Scope  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from tests.support.apiserver import Api, definition  # noqa: E402
from tests.support.clusterkey import ACCESS, write_key_files  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

ENV = "benchauth"
CHECKS = 20000


async def ping(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def check_alone(cache: TokenCache, header: str) -> float:
    """Microseconds per token check (parse, cached record, hash, compare), in-process."""
    began = time.perf_counter()
    for _ in range(CHECKS):
        await cache.caller(header)
    return (time.perf_counter() - began) / CHECKS * 1e6


def row(name: str, cell: Cell, base: Cell) -> str:
    return (
        f"  {name:<34} {cell.requests_per_s:>9.0f}/s "
        f"({cell.requests_per_s / base.requests_per_s:4.2f})"
        f"   p50 {cell.p50_ms:6.2f} ms ({cell.p50_ms / base.p50_ms:4.2f})"
        f"   p99 {cell.p99_ms:6.2f} ms   errors {cell.errors}"
    )


async def a_function(zk: ZooKeeper) -> str:
    await operations.provision(zk, "10.0.0.1")  # a name only: nothing is contacted
    alive = NodeAlive(64, 1 << 40).encode()
    await zk.create(layout.alive_path("10.0.0.1"), alive, ephemeral=True)
    owner = (await tenancy.find_tenant(zk, tenancy.DEFAULT_TENANT)).id
    fid = await operations.create_function(zk, parse_definition(definition()), owner=owner)
    return str(fid)


async def bench(server: ZooKeeperServer, seconds: float, levels: list[int]) -> None:
    zk = ZooKeeper(server.hosts, ENV, access=ACCESS)
    await zk.start()
    await operations.bootstrap(zk)
    await tenancy.bootstrap(zk)
    admin = (await tenancy.issue_token(zk, None, Scope.ADMIN))[1].text
    _, tenant_token = await tenancy.create_tenant(zk, "bench")
    assert tenant_token is not None
    cache = TokenCache(zk)
    await cache.start()
    plain, plain_url = await serve(web.Application())
    guarded, guarded_url = await serve(
        web.Application(middlewares=[auth_middleware(lambda _r: cache)])
    )
    keys = write_key_files(Path(tempfile.mkdtemp(prefix="bismuth-bench-keys-")))
    api = Api(ApiConfig(zookeeper=server.hosts, zookeeper_env=ENV, cluster_key_file=str(keys[0])))
    await api.start()
    try:
        fid = await a_function(zk)
        headers = {"Authorization": f"Bearer {admin}"}
        tenant_headers = {"Authorization": f"Bearer {tenant_token.text}"}
        for level in levels:
            await asyncio.to_thread(measure, plain_url + "/ping", {}, level, 1)  # warm-up
            base = await asyncio.to_thread(measure, plain_url + "/ping", {}, level, seconds)
            adm = await asyncio.to_thread(measure, guarded_url + "/ping", headers, level, seconds)
            ten = await asyncio.to_thread(
                measure, guarded_url + "/ping", tenant_headers, level, seconds
            )
            real = await asyncio.to_thread(
                measure, f"{api.url}/function/{fid}", headers, level, seconds
            )
            print(f"concurrency {level} (ratio to the baseline in brackets)")
            print(row("GET /ping, no token check", base, base))
            print(row("GET /ping, admin token checked", adm, base))
            print(row("GET /ping, tenant token checked", ten, base))
            print(row("bismuth-api GET /function/<id>", real, base))
            extra = adm.p50_ms - base.p50_ms
            print(
                f"  token check adds {extra * 1000:+.0f} us at p50 "
                f"({extra / real.p50_ms:+.1%} of a GET /function)"
            )
        alone = await check_alone(cache, f"Bearer {admin}")
        print(f"token check alone, in-process: {alone:.1f} us per request ({CHECKS} checks)")
    finally:
        await api.stop()
        await guarded.cleanup()
        await plain.cleanup()
        cache.close()
        await zk.stop()
        shutil.rmtree(keys[0].parent, ignore_errors=True)


def main() -> None:
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "No chroot path exists")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    server = ZooKeeperServer()
    server.start()
    try:
        print(f"{args.seconds:g} s per measurement, {os.cpu_count()} cpus")
        asyncio.run(bench(server, args.seconds, [int(c) for c in args.concurrency.split(",")]))
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
