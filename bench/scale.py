"""Scale of one environment on a simulated fleet, each figure next to a bare-ZooKeeper baseline.

Each node count runs on its own ZooKeeper (Debian's package, started here) with simulated
agents (:mod:`bismuth_lab.fleetsim`: a ZooKeeper session, ``alive`` znode and status
writes per node, several hundred nodes per process) and real ``bismuth-api`` processes;
the largest also with the frontend (nginx and ``bismuthfe``). Prints:

1. API creates/s and p50/p99 at each ``--nodes`` count (``--replicas`` containers each,
   ``--concurrency`` clients, ``--seconds``); baseline: the same znodes (function,
   backends, containers, route) as bare kazoo multi-ops onto the same nodes, as many.
   Where the time went: the APIs' own histograms (their handlers; ZooKeeper's answers to
   their multi-ops of placements) and how late this load generator's event loop woke
   (``--clients-first``: that loop ahead of everything else on its core).
2. At the largest count, after loading ``--functions`` functions: route propagation, the
   API's answer to a create -> nginx answers the new Host (not 404; then 200 once the
   simulated container runs), ``--samples`` creates one after another; baseline: a znode
   created by one kazoo session -> another session's watch fires.
3. ZooKeeper at that size (``mntr``/``wchs``: znodes, data size, watches; its RSS and data
   directory), and CPU and memory at rest of the API, the frontend and ZooKeeper.
4. The API leader killed (SIGKILL) while ``--rollouts`` redeploys wait for their new
   containers: until the other API leads, until every rollout is finished, and until a node
   lost at the same moment has its containers running elsewhere (minus the grace period);
   baseline: a kazoo Election's holder killed, until the other contender leads.
5. 10% of the nodes lost at once: until every container they held runs on another node,
   after the grace period; baseline: the same number of moves as bare multi-ops.

Figures only (2 cores shared by everything here); never passes or fails.

    .venv/bin/python bench/scale.py        # 100 and 1,000 nodes, 10,000 functions
    .venv/bin/python bench/scale.py --nodes 20,100 --functions 500 --samples 50  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaleparts import (
    FLEET_CPUS,
    ApiProcess,
    Environment,
    at_rest,
    cpu_seconds,
    directory_size,
    four_letters,
    function_body,
    mntr,
    quantiles,
    rss_mib,
    spawn,
    until,
)

from bismuth_api.config import ApiConfig
from bismuth_core import layout, operations
from bismuth_core.layout import Backend, ContainerRecord
from bismuth_core.zk import ZooKeeper, create, delete, set_data
from bismuth_lab.fleetsim import sim_ips
from tests.support.clusterkey import ACCESS


def row(name: str, rate: float | None, values: list[float], extra: str = "") -> str:
    p50, p99 = quantiles(values)
    head = f"{name:<46}" + (f" {rate:>8.1f}/s" if rate is not None else " " * 11)
    return f"{head}   p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   n={len(values)} {extra}"


async def timed_load(
    run, count: int | None, seconds: float, concurrency: int
) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """Call ``run(i)`` from ``concurrency`` workers for ``seconds`` or ``count`` calls."""
    latencies: list[float] = []
    issued = 0
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal issued
        while time.monotonic() < stop_at and (count is None or issued < count):
            issued += 1
            started = time.perf_counter()
            await run(issued)
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - started, latencies


class Creator:
    """Creates through the APIs (in turn), remembering the functions made."""

    def __init__(self, http: aiohttp.ClientSession, apis: list[ApiProcess], replicas: int) -> None:
        self.http, self.apis, self.replicas = http, apis, replicas
        self.made: list[str] = []
        self.failures = 0

    async def __call__(self, i: int) -> None:
        host = f"f{uuid.uuid4().hex[:16]}.scale"
        api = self.apis[i % len(self.apis)]
        async with self.http.post(
            api.url + "/function", data=function_body(host, self.replicas)
        ) as resp:
            body = await resp.json()
            if resp.status == 200:
                self.made.append(body["id"])
            else:
                self.failures += 1
                if self.failures <= 3:
                    print(f"  (refused: {resp.status} {body.get('error')})")


async def bare_creates(
    zk: ZooKeeper, nodes: list[str], replicas: int, count: int, concurrency: int
) -> tuple[float, list[float]]:
    """The znodes of ``count`` creates as bare multi-ops (no HTTP, validation, scheduling)."""
    text = function_body("x", replicas).encode()

    async def one(i: int) -> None:
        fid = uuid.uuid4()
        backends = [
            Backend(nodes[(i * replicas + r) % len(nodes)], uuid.uuid4()) for r in range(replicas)
        ]
        record = ContainerRecord(fid, 0.05, 64 << 20).encode()
        await zk.commit(
            [
                create(layout.function_path(fid), text),
                create(layout.backends_path(fid), layout.pack_backends(backends)),
                *(create(layout.container_path(b.ip, b.container_id), record) for b in backends),
                create(layout.route_path(f"b{fid.hex[:16]}.scale"), fid.bytes),
            ]
        )

    return await timed_load(one, count, 3600, concurrency)


async def creates(
    env: Environment, http: aiohttp.ClientSession, nodes: int, args: argparse.Namespace
) -> Creator:
    creator = Creator(http, env.apis[: args.api_replicas], args.replicas)
    await creates_row(env, creator, f"API creates, {nodes} nodes", nodes, args)
    if args.idle_nodes and args.creates_only:
        await env.fleet.behave(idle=True)
        await creates_row(env, creator, "  the same, nodes not reacting", nodes, args)
        await env.fleet.behave()
    return creator


async def creates_row(
    env: Environment, creator: Creator, name: str, nodes: int, args: argparse.Namespace
) -> None:
    """Creates/s through the APIs, where the CPU went meanwhile, and the bare baseline."""
    parts = {
        "API": [a.proc.pid for a in creator.apis],
        "ZooKeeper": [env.server.proc.pid] if env.server.proc else [],
        "nodes": env.fleet.pids,
        "bench": [os.getpid()],
    }
    before = {k: sum(cpu_seconds(p) for p in pids) for k, pids in parts.items()}
    load_before = os.getloadavg()[0]
    made_before = len(creator.made)
    histograms_before = await api_histograms(creator.http, creator.apis, env.admin)
    lags: list[float] = []
    probe = asyncio.create_task(loop_lag(lags))
    took, latencies = await timed_load(creator, None, args.seconds, args.concurrency)
    probe.cancel()
    histograms = await api_histograms(creator.http, creator.apis, env.admin)
    used = {k: sum(cpu_seconds(p) for p in pids) - before[k] for k, pids in parts.items()}
    cpu = used["API"] / max(len(latencies), 1)
    api_rate = len(latencies) / took
    replicas = f" over {len(creator.apis)} API replicas" if len(creator.apis) > 1 else ""
    extra = f"failed={creator.failures}, API CPU {cpu * 1000:.2f} ms per create{replicas}"
    print(row(name, api_rate, latencies, extra))
    shares = ", ".join(f"{k} {100 * v / took:.0f}%" for k, v in used.items())
    made = creator.made[made_before:]
    transactions = await transactions_of(env.zk, made)
    print(
        f"  {len(made) / max(transactions, 1):.1f} creates per ZooKeeper transaction; CPU "
        f"meanwhile (% of one core): {shares}; load average "
        f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    for key, what in (
        ("handled", "the API's handlers (its metrics)"),
        ("committed", "ZooKeeper's answers to the API's multi-ops"),
    ):
        before = histograms_before[key]
        waits = {le: n - before.get(le, 0.0) for le, n in histograms[key].items()}
        w50, w99 = (1000 * bucket_quantile(waits, q) for q in (0.5, 0.99))
        print(
            f"  of which {what}: p50 {w50:.1f} ms, p99 {w99:.1f} ms "
            f"(from histogram buckets), n={waits.get(float('inf'), 0):.0f}"
        )
    print(row("  the load generator's own event loop lag", None, lags))
    bare_took, bare = await bare_creates(
        env.zk, sim_ips(nodes), args.replicas, len(latencies), args.concurrency
    )
    print(row("  baseline: bare kazoo multi-ops, same znodes", len(bare) / bare_took, bare))
    print(f"  ratio API / baseline: {api_rate / (len(bare) / bare_took):.3f}")


async def loop_lag(lags: list[float], every: float = 0.005) -> None:
    """How late this process's event loop wakes from ``every``-second sleeps, until
    cancelled: the share of the creates' latency that is the load generator's own."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(every)
        lags.append(max(time.perf_counter() - started - every, 0.0))


HANDLED = ("bismuth_api_request_seconds_bucket", {"route": "/function"})
COMMITTED = ("bismuth_api_placement_commit_seconds_bucket", {})


async def api_histograms(
    http: aiohttp.ClientSession, apis: list[ApiProcess], admin: str
) -> dict[str, dict[float, float]]:
    """Two histograms of the APIs' metrics, summed over the APIs: the time their handlers
    took to answer ``/function`` requests, and ZooKeeper's answers to their multi-ops of
    placements; each as upper bound (seconds) -> how many came within it."""
    found: dict[str, dict[float, float]] = {"handled": {}, "committed": {}}
    for api in apis:
        headers = {"Authorization": f"Bearer {admin}"}
        async with http.get(api.url + "/metrics", headers=headers) as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for key, (name, labels) in (("handled", HANDLED), ("committed", COMMITTED)):
                    if sample.name == name and labels.items() <= sample.labels.items():
                        le = float(sample.labels["le"])
                        found[key][le] = found[key].get(le, 0.0) + sample.value
    return found


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """The ``q`` quantile of a cumulative histogram, linear within a bucket (as Prometheus'
    ``histogram_quantile``; at most the largest finite bound)."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    rank, below, lower = q * total, 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(buckets[le] - below, 1e-9)
        below, lower = buckets[le], le
    return lower


async def transactions_of(zk: ZooKeeper, fids: list[str]) -> int:
    """How many ZooKeeper transactions created these functions (their znodes' czxid)."""
    zxids: set[int] = set()
    for start in range(0, len(fids), 500):
        stats = await asyncio.gather(
            *(zk.exists(layout.function_path(uuid.UUID(f))) for f in fids[start : start + 500])
        )
        zxids.update(stat.czxid for stat in stats if stat is not None)
    return len(zxids)


async def load(
    env: Environment, http: aiohttp.ClientSession, creator: Creator, args: argparse.Namespace
) -> None:
    have = len(await env.zk.children(layout.FUNCTIONS))
    missing = max(args.functions - have, 0)
    failed = creator.failures
    took, _ = await timed_load(creator, missing, 3600, 16)
    total = len(await env.zk.children(layout.FUNCTIONS))
    print(
        f"loaded {total} functions ({missing} more through the API, concurrency 16, "
        f"in {took:.1f} s, {creator.failures - failed} refused)"
    )

    async def settled() -> bool:
        stats = await env.fleet.stats()
        return stats.running == stats.containers and stats.containers >= total * args.replicas

    started = time.monotonic()
    await until(settled, 600, "every container Running", 1.0)
    stats = await env.fleet.stats()
    print(
        f"{stats.containers} containers Running on {stats.nodes} nodes "
        f"({time.monotonic() - started:.1f} s after the load)"
    )


async def frontend_sync(env: Environment, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    config = await env.start_frontend()
    admin = "http://{}:{}/healthz".format(*config.admin_address())
    routes = len(await env.zk.children(layout.ROUTES))

    async def synced() -> bool:
        try:
            async with http.get(admin) as resp:
                health = await resp.json()
        except (aiohttp.ClientError, ValueError):
            return False
        return bool(health["nginx"]["synced"]) and health["nginx"]["routes"] >= routes

    await until(synced, 600, "frontend synced", 0.2)
    print(
        f"frontend started and loaded {routes} routes into nginx "
        f"in {time.monotonic() - started:.1f} s"
    )


async def propagation(
    env: Environment, http: aiohttp.ClientSession, args: argparse.Namespace
) -> None:
    assert env.fe_config is not None
    public = "http://{}:{}/".format(*env.fe_config.public_address())
    api = env.apis[0]
    known, served, whole = [], [], []
    async with aiohttp.ClientSession() as client:
        for _ in range(args.samples):
            host = f"p{uuid.uuid4().hex[:16]}.scale"
            began = time.monotonic()
            async with http.post(
                api.url + "/function", data=function_body(host, args.replicas)
            ) as resp:
                assert resp.status == 200, await resp.text()
            answered = time.monotonic()
            status = 404
            while status == 404:
                await asyncio.sleep(0.001)
                async with client.get(public, headers={"Host": host}) as got:
                    status = got.status
                    await got.read()
            known.append(time.monotonic() - answered)
            while status != 200:
                await asyncio.sleep(0.001)
                async with client.get(public, headers={"Host": host}) as got:
                    status = got.status
                    await got.read()
            served.append(time.monotonic() - answered)
            whole.append(time.monotonic() - began)
    print(row("route propagation: API answered -> nginx knows", None, known))
    print(row("  ... -> nginx serves (container Running)", None, served))
    print(row("  from the API request to served", None, whole))
    print(
        row(
            "  baseline: kazoo create -> other session's watch",
            None,
            await watch_latency(env, args.samples),
        )
    )


async def watch_latency(env: Environment, samples: int) -> list[float]:
    watcher = ZooKeeper(env.server.hosts, env.env, access=ACCESS)
    await watcher.start()
    loop = asyncio.get_running_loop()
    times = []
    try:
        for _ in range(samples):
            path = f"{layout.ROUTES}/w{uuid.uuid4().hex[:16]}.scale"
            fired: asyncio.Future[float] = loop.create_future()

            def seen(_event: object, fired: asyncio.Future[float] = fired) -> None:
                loop.call_soon_threadsafe(
                    lambda: fired.done() or fired.set_result(time.monotonic())
                )

            await watcher.exists(path, watch=seen)
            written = time.monotonic()
            await env.zk.create(path, b"x" * 16)
            times.append(await fired - written)
            await env.zk.delete(path)
    finally:
        await watcher.stop()
    return times


async def zookeeper_figures(
    env: Environment, http: aiohttp.ClientSession, args: argparse.Namespace
) -> None:
    figures = mntr(env.server.port)
    watches = four_letters(env.server.port, "wchs").strip().replace("\n", "; ")
    assert env.server.proc is not None
    data = env.server.dir / "data"
    snaps = sorted((data / "version-2").glob("snapshot.*"), key=lambda p: p.stat().st_mtime)
    data_mib = int(figures.get("zk_approximate_data_size", 0)) / 2**20
    snapshot_mib = snaps[-1].stat().st_size / 2**20 if snaps else 0.0
    print(
        f"ZooKeeper: {figures.get('zk_znode_count')} znodes, {data_mib:.1f} MiB data, "
        f"{figures.get('zk_watch_count')} watches, {figures.get('zk_ephemerals_count')} "
        f"ephemerals, {figures.get('zk_num_alive_connections')} connections; "
        f"RSS {rss_mib(env.server.proc.pid):.0f} MiB (-Xmx{args.zk_heap}); data dir "
        f"{directory_size(data) / 2**20:.0f} MiB, last snapshot {snapshot_mib:.1f} MiB"
    )
    print(f"  wchs: {watches}")
    pids = {
        "bismuth-api (leader)": [env.apis[0].proc.pid],
        "bismuth-api (standby)": [a.proc.pid for a in env.apis[1:]],
        "bismuthfe (controller)": [env.fe[1].pid],
        "nginx (master + 1 worker)": env.nginx_pids(),
        "ZooKeeper": [env.server.proc.pid],
        "simulator (all workers)": env.fleet.pids,
    }
    for name, (cpu, rss) in (await at_rest(pids, args.rest)).items():
        print(f"  at rest: {name:<28} CPU {cpu:5.1f}% of a core   RSS {rss:7.0f} MiB")


async def leader_of(env: Environment, http: aiohttp.ClientSession) -> ApiProcess | None:
    for api in env.apis:
        health = await api.health(http)
        if health and health.get("leader"):
            return api
    return None


async def leader_kill(
    env: Environment, http: aiohttp.ClientSession, made: list[str], args: argparse.Namespace
) -> None:
    leader = await leader_of(env, http)
    assert leader is not None, "no API leads"
    other = next(a for a in env.apis if a is not leader)
    await env.fleet.behave(start_delay=args.start_delay)
    targets = random.Random(7).sample(made, args.rollouts)
    lost_node = random.Random(8).choice(env.fleet.nodes)
    held = await env.zk.children(layout.containers_path(lost_node))
    for fid in targets:
        async with http.put(f"{other.url}/function/{fid}", data=b"") as resp:
            assert resp.status == 200, await resp.text()
    killed = time.monotonic()
    os.kill(leader.proc.pid, signal.SIGKILL)
    await env.fleet.stop([lost_node])
    env.apis = [other, leader]

    async def leads() -> bool:
        health = await other.health(http)
        return bool(health and health.get("leader"))

    async def rollouts_done() -> bool:
        return not await env.zk.children(layout.ROLLOUTS)

    async def moved() -> bool:
        return not await env.zk.children(layout.containers_path(lost_node))

    tasks = [
        until(c, 120, w, 0.05)
        for c, w in ((leads, "leader"), (rollouts_done, "rollouts"), (moved, "lost node"))
    ]
    led, finished, emptied = await asyncio.gather(*tasks)
    await until(lambda: all_running(env), 120, "replacements running", 0.2)
    print(
        f"API leader SIGKILLed with {args.rollouts} rollouts waiting (their containers start "
        f"in {args.start_delay:g} s) and 1 node ({len(held)} containers) lost with it:"
    )
    print(f"  the standby API leads after {led - killed:.2f} s")
    print(f"  every rollout finished after {finished - killed:.2f} s")
    print(
        f"  the lost node's containers replaced after {emptied - killed:.2f} s "
        f"= grace ({args.grace:g} s) {emptied - killed - args.grace:+.2f} s"
    )
    takeover = await election_takeover(env, args)
    print(f"  baseline: kazoo Election, holder SIGKILLed -> the other leads: {takeover:.2f} s")
    await env.fleet.behave(start_delay=0.0)


async def _led(env: Environment, http: aiohttp.ClientSession) -> bool:
    return await leader_of(env, http) is not None


async def all_running(env: Environment) -> bool:
    stats = await env.fleet.stats()
    return stats.running == stats.containers


async def election_takeover(env: Environment, args: argparse.Namespace) -> float:
    """A kazoo Election held by another process, which is SIGKILLed: until this one leads."""
    session = args.api_session
    code = "\n".join(
        [
            "import sys, time",
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})",
            "from kazoo.recipe.election import Election",
            "from bismuth_core.credentials import cluster_credentials, writer_access",
            "from bismuth_core.zk import ZooKeeper",
            f"access = writer_access(cluster_credentials(file={str(env.keys[0])!r}))",
            f"zk = ZooKeeper({env.server.hosts!r}, {env.env!r}, access=access,"
            f" session_timeout={session!r})",
            "zk.client.start(15)",
            "Election(zk.client, '/leader/bench').run(lambda: time.sleep(3600))",
        ]
    )
    holder = spawn([sys.executable, "-c", code])
    watcher = ZooKeeper(env.server.hosts, env.env, access=ACCESS, session_timeout=session)
    await watcher.start()
    try:
        await until(lambda: _has_children(env.zk, "/leader/bench"), 30, "holder leads", 0.05)
        from kazoo.recipe.election import Election

        election = Election(watcher.client, "/leader/bench")
        won = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            asyncio.to_thread(
                election.run, lambda: loop.call_soon_threadsafe(won.set_result, time.monotonic())
            )
        )
        await until(
            lambda: _children_count(env.zk, "/leader/bench", 2), 30, "contender queued", 0.02
        )
        killed = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        took = await won - killed
        await asyncio.to_thread(election.cancel)
        await task
        return took
    finally:
        holder.kill()
        holder.wait()
        await watcher.stop()


async def _has_children(zk: ZooKeeper, path: str) -> bool:
    return bool(await zk.children(path))


async def _children_count(zk: ZooKeeper, path: str, count: int) -> bool:
    return len(await zk.children(path)) >= count


async def node_loss(env: Environment, args: argparse.Namespace) -> None:
    await until(lambda: all_running(env), 120, "steady state", 0.2)
    before = await env.fleet.stats()
    nodes = env.fleet.nodes
    lost = random.Random(9).sample(nodes, max(1, len(nodes) // 10))
    held = sum([len(await env.zk.children(layout.containers_path(ip))) for ip in lost])
    lost_at = time.time()
    started = time.monotonic()
    await env.fleet.stop(lost)

    async def replaced() -> bool:
        stats = await env.fleet.stats()
        return stats.running == before.running and stats.running == stats.containers

    await until(replaced, 600, "lost containers replaced", 0.25)
    last = (await env.fleet.stats()).last_running - lost_at
    print(f"{len(lost)} of {len(nodes)} nodes lost at once, holding {held} containers:")
    print(
        f"  all Running on other nodes {last:.1f} s after the loss = grace ({args.grace:g} s) "
        f"{last - args.grace:+.1f} s (seen after {time.monotonic() - started:.1f} s)"
    )
    bare = await bare_moves(env, held)
    print(f"  baseline: {held} bare multi-op moves, one client, one after another: {bare:.1f} s")


async def bare_moves(env: Environment, count: int) -> float:
    """``count`` moves of one container each (delete old + status, create new, set backends)."""
    ip_from, ip_to = sim_ips(2, 60000)
    scratch = ZooKeeper(env.server.hosts, env.env + "bare", access=ACCESS, op_timeout=30)
    await scratch.start()
    try:
        await operations.bootstrap(scratch)
        moves = [(uuid.uuid4(), Backend(ip_from, uuid.uuid4())) for _ in range(count)]
        for ip in (ip_from, ip_to):
            await scratch.ensure_path(layout.containers_path(ip))

        async def prepare(i: int) -> None:
            fid, old = moves[i - 1]
            await scratch.commit(
                [
                    create(layout.function_path(fid)),
                    create(layout.backends_path(fid), layout.pack_backends([old])),
                    create(
                        layout.container_path(old.ip, old.container_id),
                        ContainerRecord(fid).encode(),
                    ),
                    create(layout.status_path(old.ip, old.container_id), b"\x02"),
                ]
            )

        await timed_load(prepare, count, 3600, 8)
        started = time.monotonic()
        for fid, old in moves:
            new = Backend(ip_to, uuid.uuid4())
            await scratch.commit(
                [
                    delete(layout.status_path(old.ip, old.container_id)),
                    delete(layout.container_path(old.ip, old.container_id)),
                    create(
                        layout.container_path(new.ip, new.container_id),
                        ContainerRecord(fid).encode(),
                    ),
                    set_data(layout.backends_path(fid), layout.pack_backends([new])),
                ]
            )
        return time.monotonic() - started
    finally:
        await scratch.stop()


async def run(args: argparse.Namespace, work: Path) -> None:
    # A SIGTERM (a timeout around the bench) ends it as Ctrl-C does: each environment's
    # processes (ZooKeeper, APIs, simulated nodes) are stopped, none is left running.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    counts = [int(n) for n in args.nodes.split(",")]
    print(
        f"{os.cpu_count()} cpus; {args.replicas} replicas per function; creates at "
        f"concurrency {args.concurrency} for {args.seconds:g} s"
    )
    async with aiohttp.ClientSession() as anonymous:
        for n, nodes in enumerate(counts):
            env = Environment(
                work,
                args.zk_heap,
                args.grace,
                args.api_session,
                pin=args.pin,
                fleet_alone=args.fleet_alone,
            )
            try:
                await one_size(env, anonymous, nodes, n == len(counts) - 1, args)
            finally:
                await env.close()


async def one_size(
    env: Environment,
    anonymous: aiohttp.ClientSession,
    nodes: int,
    largest: bool,
    args: argparse.Namespace,
) -> None:
    took = await env.start(nodes)
    print(
        f"--- {nodes} simulated nodes: alive in {took:.1f} s, {len(env.fleet.pids)} processes "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    for _ in range(args.api_replicas if args.creates_only else 1):
        await env.start_api(anonymous)
    if largest and not args.creates_only:
        await env.start_api(anonymous)  # a standby, for the leader's kill
        await until(lambda: _led(env, anonymous), 60, "an API leads", 0.1)
        leader = await leader_of(env, anonymous)
        assert leader is not None
        env.apis = [leader, *(a for a in env.apis if a is not leader)]
    headers = {"Authorization": f"Bearer {env.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        creator = await creates(env, http, nodes, args)
        if not largest or args.creates_only:
            return
        await load(env, http, creator, args)
        await frontend_sync(env, anonymous)
        await zookeeper_figures(env, anonymous, args)
        await propagation(env, http, args)
        await leader_kill(env, http, creator.made, args)
        await node_loss(env, args)
        print(f"(load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", "No chroot path exists")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="100,1000", help="node counts, comma-separated")
    parser.add_argument("--functions", type=int, default=10_000, help="loaded at the largest count")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="of creates per count")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=200, help="route propagation samples")
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--start-delay", type=float, default=1.0, help="containers of the rollouts")
    parser.add_argument("--grace", type=float, default=10.0, help="the API's node_loss_grace")
    parser.add_argument(
        "--api-session",
        type=float,
        default=ApiConfig.zookeeper_session_timeout,
        help="the API's ZooKeeper session timeout (its default)",
    )
    parser.add_argument("--rest", type=float, default=10.0, help="seconds CPU at rest is measured")
    parser.add_argument("--zk-heap", default="1g")
    parser.add_argument("--creates-only", action="store_true", help="only the creates/s figures")
    parser.add_argument(
        "--api-replicas", type=int, default=1, help="with --creates-only: creates spread over these"
    )
    parser.add_argument(
        "--idle-nodes",
        action="store_true",
        help="creates again with the simulated nodes not reacting (the API and ZooKeeper alone)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="ZooKeeper, the APIs and the frontend on cpu 0; simulated nodes and clients on cpu 1",
    )
    parser.add_argument(
        "--fleet-alone",
        action="store_true",
        help="with --pin: this load generator on cpu 0 too, the simulated nodes alone on cpu 1",
    )
    parser.add_argument(
        "--clients-first",
        action="store_true",
        help="this load generator's event loop runs before anything else on its core "
        "(SCHED_FIFO; its threads and the processes it starts stay as they are): latencies "
        "without the time it waited for its own turn",
    )
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, FLEET_CPUS)  # the simulated nodes inherit it
    if args.clients_first:
        policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK  # not inherited: this thread only
        os.sched_setscheduler(0, policy, os.sched_param(1))
    work = Path(tempfile.mkdtemp(prefix="bismuth-scale-"))
    work.chmod(0o755)
    started = time.monotonic()
    try:
        asyncio.run(run(args, work))
    except asyncio.CancelledError:
        sys.exit("bench/scale.py: terminated; its processes are stopped")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(f"(bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
