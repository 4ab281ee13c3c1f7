"""Cold starts stage by stage: ``POST /function`` → first 200 through the frontend.

Starts its own ZooKeeper, a private containerd and real ``bismuth-api``, ``bismuthd``,
``bismuthfe-nginx`` and ``bismuthfe`` processes, with the base image
``bismuth.local/python:3.11`` (built into ``var/images/`` if missing). Each run POSTs a new
Server-mode function (``python3 -m http.server``) through the API, calls it through the
frontend until the first 200, reads the stage stamps the daemons recorded, and deletes it
(waiting until its container is gone). The stamps come from the daemons themselves:

- ``committed``: the container znode's ctime (ZooKeeper applied the API's multi-op);
- ``seen`` … ``running``: the agent's ``GET /timeline`` (:mod:`bismuth_agent.timeline`);
- ``routed``: the frontend's ``GET /timeline`` on its admin address;
- ``POST`` and ``first 200``: this script, around its own requests (it polls every 2 ms).

Printed, as figures only (never pass or fail): p50 and p99 of each stage (milliseconds from
the stage before), of the time from the POST to each stage, and of the totals, next to the
baselines measured in the same run with the same image: ``ctr run --rm`` of
``python3 -c pass``, and ``ctr run --rm --net-host`` of ``python3 -m http.server`` until its
first 200.

    .venv/bin/python bench/cold_start.py [--runs 30]

Run as root. Every process shares the machine's cores: note ``uptime``'s load with figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_paths import ARCHIVE, IMAGE, ensure_image  # noqa: E402

from bismuth_agent.config import AgentConfig  # noqa: E402
from bismuth_agent.containerd.client import ContainerdClient  # noqa: E402
from bismuth_agent.containerd.errors import NotFound  # noqa: E402
from bismuth_agent.containerd.oci import import_oci_archive  # noqa: E402
from bismuth_agent.network import Firewall  # noqa: E402
from bismuth_agent.service import network_settings  # noqa: E402
from bismuth_agent.timeline import STAGES  # noqa: E402
from bismuth_core import layout, operations, tenancy  # noqa: E402
from bismuth_core.tokens import Scope  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from tests.support.clusterkey import ACCESS, AGENT_AUTH, write_key_files  # noqa: E402
from tests.support.containerd import ContainerdServer  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

NODE = "127.0.78.1"
ENV = "benchcold"
POOL = "10.252.0.0/24"
SERVER = ["/usr/bin/python3", "-m", "http.server"]
POLL = 0.002  # seconds between calls through the frontend while waiting for the first 200
ORDER = ("post", *STAGES, "routed", "first 200")


def definition(hostname: str) -> dict[str, object]:
    return {
        "image": IMAGE,
        "cpu": 0.5,
        "memory": 128 << 20,
        "max_instances": 1,
        "invoke_mode": {"Server": [[*SERVER, "8000"], 8000]},
        "routes": [{"hostname": hostname}],
    }


def quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


@dataclass
class Cluster:
    """What the bench talks to."""

    zk: ZooKeeper
    ctrd: ContainerdClient
    api: str
    token: str
    frontend: str
    frontend_admin: str
    agent: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def toml(values: dict[str, object]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


async def until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.05)


def start_daemons(work: Path, zk_hosts: str, ctrd_server: ContainerdServer) -> list[Path]:
    """Config files of agent, API and frontend; returns [agent, api, frontend] config."""
    cluster_key, frontend_key = write_key_files(work / "keys")
    agent_port = free_port()
    agent = work / "agent.toml"
    agent.write_text(
        toml(
            {
                "zookeeper": zk_hosts,
                "zookeeper_env": ENV,
                "bind": NODE,
                "port": agent_port,
                "containerd_address": ctrd_server.address,
                # where mounts reach containerd's own mount namespace, as on a host
                "state_dir": f"{ctrd_server.shared}/bench-state",
                "log_dir": f"{work}/logs",
                "cgroup_parent": f"{ctrd_server.cgroup_parent}/bench",
                "network_pool": POOL,
                "provider_storage": f"local://{work}/data",
                "cluster_key_file": str(cluster_key),
                "stop_grace": 2.0,
            }
        )
    )
    api = work / "api.toml"
    api.write_text(
        toml(
            {
                "zookeeper": zk_hosts,
                "zookeeper_env": ENV,
                "bind": f"127.0.0.1:{free_port()}",
                "agent_port": agent_port,
                "cluster_key_file": str(cluster_key),
                "log_level": "warning",
            }
        )
    )
    fe = work / "fe.toml"
    fe.write_text(
        toml(
            {
                "zookeeper": zk_hosts,
                "zookeeper_env": ENV,
                "bind": f"127.0.0.1:{free_port()}",
                "admin_bind": f"127.0.0.1:{free_port()}",
                "agent_port": agent_port,
                "frontend_key_file": str(frontend_key),
                "run_dir": f"{work}/fe-run",
                "temp_dir": f"{work}/fe-tmp",
                "log_level": "warning",
            }
        )
    )
    return [agent, api, fe]


def setting(path: Path, key: str) -> object:
    import tomllib

    return tomllib.loads(path.read_text())[key]


async def start_cluster(work: Path, zk_server: ZooKeeperServer, ctrd_server) -> Cluster:
    zk = ZooKeeper(zk_server.hosts, ENV, access=ACCESS)
    await zk.start()
    await operations.bootstrap(zk)
    await tenancy.bootstrap(zk)
    await operations.provision(zk, NODE)
    token = (await tenancy.issue_token(zk, None, Scope.ADMIN))[1].text
    ctrd = ContainerdClient(ctrd_server.address, "bismuth")
    await ctrd.ensure_namespace()
    await import_oci_archive(ctrd, ARCHIVE)
    agent, api, fe = start_daemons(work, zk_server.hosts, ctrd_server)
    bindir = Path(sys.executable).parent
    cluster = Cluster(
        zk,
        ctrd,
        api=f"http://{setting(api, 'bind')}",
        token=token,
        frontend=f"http://{setting(fe, 'bind')}",
        frontend_admin=f"http://{setting(fe, 'admin_bind')}",
        agent=f"http://{NODE}:{setting(agent, 'port')}",
    )
    (work / "fe-tmp").mkdir(mode=0o755)  # nginx's workers reach it
    daemons = (
        ("bismuthd", agent),
        ("bismuth-api", api),
        ("bismuthfe-nginx", fe),
        ("bismuthfe", fe),
    )
    for name, conf in daemons:
        cluster.procs.append(
            spawn([str(bindir / name), "--config", str(conf)], work / f"{name}.log")
        )
    await until(lambda: zk.exists(layout.alive_path(NODE)), "the agent alive")
    return cluster


@dataclass
class Start:
    """One cold start: wall-clock time of each stage reached."""

    at: dict[str, float]

    def since_post(self, stage: str) -> float | None:
        t = self.at.get(stage)
        return None if t is None else (t - self.at["post"]) * 1000


async def cold_start(http: aiohttp.ClientSession, cluster: Cluster, n: int) -> Start:
    host = f"c{n}-{uuid.uuid4().hex[:6]}.bench"
    auth = {"Authorization": f"Bearer {cluster.token}"}
    posted = time.time()
    async with http.post(f"{cluster.api}/function", json=definition(host), headers=auth) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"POST /function: {r.status} {body}")
    fid = body["id"]
    while True:
        async with http.get(cluster.frontend + "/", headers={"Host": host}) as r:
            await r.read()
            if r.status == 200:
                first = time.time()
                cid = r.headers["X-Bismuth-Container-ID"]
                break
        await asyncio.sleep(POLL)
    at = {"post": posted, "first 200": first}
    stat = await cluster.zk.exists(layout.container_path(NODE, uuid.UUID(cid)))
    if stat is not None:
        at["committed"] = stat.ctime / 1000
    at.update(await agent_timeline(http, cluster, cid))
    async with http.get(f"{cluster.frontend_admin}/timeline") as r:
        at.update((await r.json()).get(cid, {}))
    async with http.delete(f"{cluster.api}/function/{fid}", headers=auth) as r:
        await r.read()
    await until(lambda: gone(cluster.ctrd), "the container removed", 60)
    return Start(at)


async def agent_timeline(
    http: aiohttp.ClientSession, cluster: Cluster, cid: str, timeout: float = 10.0
) -> dict[str, float]:
    """The agent's stamps of ``cid`` once ``running`` is among them: the agent stamps it when
    its status write returns, which the frontend may have seen and routed a moment before."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{cluster.agent}/timeline?container={cid}", headers=AGENT_AUTH) as r:
            stamps = {k: v for k, v in (await r.json())[cid].items() if k != "committed"}
        if "running" in stamps or time.monotonic() > deadline:
            return stamps
        await asyncio.sleep(POLL)


async def gone(ctrd: ContainerdClient) -> bool:
    return not await ctrd.containers.list([f'labels."bismuth.node"=={NODE}'])


@dataclass
class Update:
    """One redeploy under a request loop: seconds from the PUT to the new container's first
    200 and to the old task gone, and the requests that failed meanwhile."""

    served: float
    gone: float
    failed: Counter[str]


async def update(http: aiohttp.ClientSession, cluster: Cluster, fid: str, host: str) -> Update:
    auth = {"Authorization": f"Bearer {cluster.token}"}
    async with http.get(f"{cluster.api}/function/{fid}", headers=auth) as r:
        (old,) = [b["backend"]["container_id"] for b in (await r.json())["backends"]]
    first: dict[str, float] = {}
    failed: Counter[str] = Counter()
    stopping = asyncio.Event()

    async def calls() -> None:
        while not stopping.is_set():
            try:
                async with http.get(cluster.frontend + "/", headers={"Host": host}) as r:
                    body = await r.read()
                    if r.status != 200:
                        failed[f"{r.status} {body[:80]!r}"] += 1
                    else:
                        first.setdefault(r.headers["X-Bismuth-Container-ID"], time.time())
            except aiohttp.ClientError as exc:
                failed[type(exc).__name__] += 1

    loops = [asyncio.create_task(calls()) for _ in range(2)]
    put = time.time()
    async with http.put(f"{cluster.api}/function/{fid}", headers=auth) as r:
        await r.read()
    while True:
        try:
            await cluster.ctrd.tasks.get(old)
        except NotFound:
            gone = time.time()
            break
        await asyncio.sleep(POLL)
    stopping.set()
    await asyncio.gather(*loops)
    served = min((t for cid, t in first.items() if cid != old), default=float("nan"))
    return Update(served - put, gone - put, failed)


async def updates(http: aiohttp.ClientSession, cluster: Cluster, runs: int) -> list[Update]:
    host = f"u-{uuid.uuid4().hex[:6]}.bench"
    auth = {"Authorization": f"Bearer {cluster.token}"}
    async with http.post(f"{cluster.api}/function", json=definition(host), headers=auth) as r:
        fid = (await r.json())["id"]
    done = []
    for _ in range(runs):
        while True:  # the function serves before each update
            async with http.get(cluster.frontend + "/", headers={"Host": host}) as r:
                await r.read()
                if r.status == 200:
                    break
            await asyncio.sleep(POLL)
        done.append(await update(http, cluster, fid, host))
    async with http.delete(f"{cluster.api}/function/{fid}", headers=auth) as r:
        await r.read()
    await until(lambda: gone(cluster.ctrd), "the container removed", 60)
    return done


def update_report(done: list[Update]) -> str:
    served = [u.served * 1000 for u in done]
    after = [(u.gone - u.served) * 1000 for u in done]
    (s50, s99), (a50, a99) = quantiles(served), quantiles(after)
    return "\n".join(
        [
            f"updates (PUT, redeploy) under a request loop: {len(done)} (milliseconds)",
            f"{'':<44} {'p50':>8} {'p99':>8}",
            f"{'PUT -> the new container serves':<44} {s50:>8.1f} {s99:>8.1f}",
            f"{'the new container serves -> old task gone':<44} {a50:>8.1f} {a99:>8.1f}",
            f"failed requests during the updates: {sum(sum(u.failed.values()) for u in done)}",
            *(f"  {n} x {what}" for what, n in sum((u.failed for u in done), Counter()).items()),
        ]
    )


def ctr(address: str, *args: str) -> list[str]:
    return ["ctr", "-a", address, "-n", "bismuth", *args]


def ctr_pass(address: str, runs: int, fifo_dir: Path) -> list[float]:
    """``ctr run --rm`` of ``python3 -c pass``: seconds each."""
    times = []
    for i in range(runs):
        began = time.perf_counter()
        subprocess.run(
            [
                *ctr(address, "run", "--rm", "--fifo-dir", str(fifo_dir), IMAGE, f"ctr-pass-{i}"),
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


async def ctr_server(address: str, runs: int, fifo_dir: Path) -> list[float]:
    """``ctr run --rm --net-host`` of the function's server until its first 200: seconds."""
    times = []
    async with aiohttp.ClientSession() as http:
        for i in range(runs):
            port = free_port()
            name = f"ctr-server-{i}"
            began = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *ctr(address, "run", "--rm", "--net-host", "--fifo-dir", str(fifo_dir)),
                IMAGE,
                name,
                *SERVER,
                str(port),
                "--bind",
                "127.0.0.1",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/") as r:
                        await r.read()
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(POLL)
            times.append(time.perf_counter() - began)
            kill = ctr(address, "task", "kill", "-s", "SIGKILL", name)
            await asyncio.to_thread(subprocess.run, kill, check=False, capture_output=True)
            await proc.wait()
    return times


def report(starts: list[Start], pass_times: list[float], server_times: list[float]) -> str:
    lines = [f"cold starts: {len(starts)} (milliseconds)", ""]
    lines.append(f"{'stage':<12} {'step p50':>9} {'step p99':>9} {'from POST p50':>14} {'p99':>8}")
    for earlier, stage in itertools.pairwise(ORDER):
        steps = [
            (s.at[stage] - s.at[earlier]) * 1000
            for s in starts
            if stage in s.at and earlier in s.at
        ]
        total = [t for s in starts if (t := s.since_post(stage)) is not None]
        if not steps or not total:
            lines.append(f"{stage:<12} {'-':>9} {'-':>9}")
            continue
        (s50, s99), (t50, t99) = quantiles(steps), quantiles(total)
        lines.append(f"{stage:<12} {s50:>9.1f} {s99:>9.1f} {t50:>14.1f} {t99:>8.1f}")
    first = [t for s in starts if (t := s.since_post("first 200")) is not None]
    running = [(s.at["running"] - s.at["committed"]) * 1000 for s in starts]
    (f50, f99), (r50, r99) = quantiles(first), quantiles(running)
    (p50, p99) = quantiles([t * 1000 for t in pass_times])
    (c50, c99) = quantiles([t * 1000 for t in server_times])
    lines += [
        "",
        f"{'':<44} {'p50':>8} {'p99':>8}",
        f"{'POST -> first 200 through the frontend':<44} {f50:>8.1f} {f99:>8.1f}",
        f"{'znode -> Running':<44} {r50:>8.1f} {r99:>8.1f}",
        f"{'ctr run --rm python3 -c pass':<44} {p50:>8.1f} {p99:>8.1f}",
        f"{'ctr run --rm --net-host http.server, 1st 200':<44} {c50:>8.1f} {c99:>8.1f}",
        f"{'ratio znode -> Running / ctr run (pass)':<44} {r50 / p50:>8.2f} {r99 / p99:>8.2f}",
        f"{'ratio POST -> first 200 / ctr run (server)':<44} {f50 / c50:>8.2f} {f99 / c99:>8.2f}",
    ]
    return "\n".join(lines)


async def bench(args: argparse.Namespace, work: Path) -> None:
    ensure_image()
    zk_server = ZooKeeperServer()
    zk_server.start()
    ctrd_server = ContainerdServer()
    ctrd_server.start()
    cluster = None
    try:
        cluster = await start_cluster(work, zk_server, ctrd_server)
        starts = []
        async with aiohttp.ClientSession() as http:
            await until(lambda: api_up(http, cluster), "the API and frontend up")
            for n in range(args.warmup + args.runs):
                start = await cold_start(http, cluster, n)
                if n >= args.warmup:
                    starts.append(start)
            done = await updates(http, cluster, args.updates) if args.updates else []
        fifo = work / "fifo"
        pass_times = await asyncio.to_thread(ctr_pass, ctrd_server.address, args.runs, fifo)
        server_times = await ctr_server(ctrd_server.address, args.runs, fifo)
        print(report(starts, pass_times, server_times))
        if done:
            print("\n" + update_report(done))
        print(f"\nload average during the run: {os.getloadavg()[0]:.2f} (1 min)")
        if args.raw:
            Path(args.raw).write_text(json.dumps([s.at for s in starts], indent=1))
    finally:
        if cluster is not None:
            for proc in reversed(cluster.procs):
                stop(proc)
            await cluster.zk.stop()
            await cluster.ctrd.close()
        await asyncio.to_thread(ctrd_server.cleanup)
        zk_server.cleanup()
        await Firewall(network_settings(AgentConfig(bind=NODE, network_pool=POOL))).remove_all()


async def api_up(http: aiohttp.ClientSession, cluster: Cluster) -> bool:
    try:
        async with (
            http.get(cluster.api + "/healthz") as a,
            http.get(cluster.frontend_admin + "/healthz") as f,
        ):
            return a.status == 200 and f.status == 200
    except aiohttp.ClientError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2, help="starts not counted")
    parser.add_argument("--updates", type=int, default=10, help="redeploys under load")
    parser.add_argument("--raw", help="write every start's stage stamps to this JSON file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bismuth-bench-"))
    work.chmod(0o711)
    try:
        asyncio.run(bench(args, work))
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
