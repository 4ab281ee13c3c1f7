"""The parts ``bench/scale.py`` runs: an environment with its own ZooKeeper, simulated nodes,
``bismuth-api`` processes and a frontend (``bismuthfe-nginx`` + ``bismuthfe``), and what
is read from them: CPU and memory from /proc, ZooKeeper's four-letter words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import spawn, stop  # noqa: E402

from bismuth_core import operations, tenancy  # noqa: E402
from bismuth_core.tokens import Scope  # noqa: E402
from bismuth_core.zk import ZooKeeper  # noqa: E402
from bismuth_fe.config import FrontendConfig  # noqa: E402
from bismuth_lab.fleetsim import Fleet, sim_ips  # noqa: E402
from tests.support.apiserver import definition  # noqa: E402
from tests.support.clusterkey import ACCESS, write_key_files  # noqa: E402
from tests.support.tomlconfig import write_config  # noqa: E402
from tests.support.zkserver import ZooKeeperServer, free_port  # noqa: E402

BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")


# --- figures --------------------------------------------------------------------------------


def quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``values`` (seconds in, milliseconds out)."""
    if len(values) < 2:
        only = values[0] * 1000 if values else 0.0
        return only, only
    q = statistics.quantiles(values, n=100)
    return q[49] * 1000, q[98] * 1000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def at_rest(pids: dict[str, list[int]], seconds: float) -> dict[str, tuple[float, float]]:
    """Per name: CPU use (% of one core) over ``seconds`` and RSS (MiB) of its processes."""
    before = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    await asyncio.sleep(seconds)
    return {
        name: (
            100 * (sum(cpu_seconds(p) for p in group) - before[name]) / seconds,
            sum(rss_mib(p) for p in group),
        )
        for name, group in pids.items()
    }


def four_letters(port: int, word: str) -> str:
    """A ZooKeeper four-letter word's answer (loopback only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def mntr(port: int) -> dict[str, str]:
    pairs = (line.split("\t", 1) for line in four_letters(port, "mntr").splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- processes --------------------------------------------------------------------------------


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Wait for ``check()``; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)
    return time.monotonic()


async def get_json(http: aiohttp.ClientSession, url: str) -> object | None:
    try:
        async with http.get(url) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, ValueError):
        return None


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    url: str

    async def health(self, http: aiohttp.ClientSession) -> dict[str, object] | None:
        if self.proc.poll() is not None:
            return None
        found = await get_json(http, self.url + "/healthz")
        return found if isinstance(found, dict) else None


SERVICE_CPUS = {0}  # with ``pin``: ZooKeeper and the daemons under test
FLEET_CPUS = {1}  # with ``pin``: the simulated nodes and the load generator (this process)
# (with ``fleet_alone`` the load generator is on SERVICE_CPUS)


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Confine every thread of process ``pid`` and of its descendants to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
            children = (task / "children").read_text().split()
        except (OSError, ValueError):
            continue  # a thread or process that ended meanwhile
        for child in children:
            pin_tree(int(child), cpus)


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Confine every thread of process ``pid`` (not its children) to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


@dataclass
class Environment:
    """One environment on its own ZooKeeper, with simulated nodes and the daemons under test."""

    work: Path
    heap: str
    grace: float
    api_session_timeout: float = 4.0
    # ZooKeeper, the APIs and the frontend on one core, the simulated nodes and the load
    # generator on the other (``pin_fleet`` confines this process, whose children inherit it)
    pin: bool = False
    # with ``pin``: the load generator (this process) on the services' core, so that the
    # simulated nodes have the other core to themselves
    fleet_alone: bool = False
    env: str = field(default_factory=lambda: "scale" + uuid.uuid4().hex[:6])
    server: ZooKeeperServer = field(init=False)
    zk: ZooKeeper = field(init=False)
    fleet: Fleet = field(init=False)
    admin: str = ""
    token: str = ""
    apis: list[ApiProcess] = field(default_factory=list)
    fe: list[subprocess.Popen[bytes]] = field(default_factory=list)
    fe_config: FrontendConfig | None = None

    async def start(self, nodes: int) -> float:
        """ZooKeeper, the environment and ``nodes`` simulated nodes; seconds the nodes took."""
        self.server = ZooKeeperServer(tick_ms=500, heap=self.heap)
        self.server.start()
        self._pin(self.server.proc)
        self.keys = write_key_files(self.work / f"keys-{self.env}")
        self.zk = ZooKeeper(self.server.hosts, self.env, access=ACCESS, op_timeout=30)
        await self.zk.start()
        await operations.bootstrap(self.zk)
        await tenancy.bootstrap(self.zk)
        self.admin = (await tenancy.issue_token(self.zk, None, Scope.ADMIN))[1].text
        _tenant, issued = await tenancy.create_tenant(self.zk, "scale")
        assert issued is not None
        self.token = issued.text  # functions are made as a tenant makes them
        self.fleet = Fleet(self.server.hosts, self.env, str(self.keys[0]))
        started = time.monotonic()
        await self.fleet.add(sim_ips(nodes))
        if self.pin and self.fleet_alone:
            for pid in self.fleet.pids:
                pin_tree(pid, FLEET_CPUS)
            pin_threads(os.getpid(), SERVICE_CPUS)
        return time.monotonic() - started

    async def start_api(self, http: aiohttp.ClientSession) -> ApiProcess:
        port = free_port()
        args = ["--zookeeper", self.server.hosts, "--zookeeper-env", self.env]
        args += ["--bind", f"127.0.0.1:{port}", "--node-loss-grace", str(self.grace)]
        args += ["--log-level", "warning"]
        profile = os.environ.get("BENCH_PROFILE_API")  # cProfile output of the first API
        if profile and not self.apis:
            args = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                profile,
                "-m",
                "bismuth_api.main",
                *args,
            ]
        else:
            args = [str(BIN / "bismuth-api"), *args]
        env = {"BISMUTH_CLUSTER_KEY_FILE": str(self.keys[0])}
        env["BISMUTH_ZOOKEEPER_SESSION_TIMEOUT"] = str(self.api_session_timeout)
        api = ApiProcess(spawn(args, env), f"http://127.0.0.1:{port}")
        self._pin(api.proc)
        self.apis.append(api)
        await until(lambda: _healthy(api, http), 60, "bismuth-api healthy", 0.1)
        return api

    async def start_frontend(self) -> FrontendConfig:
        directory = self.work / f"fe-{self.env}"
        (directory / "tmp").mkdir(parents=True)
        directory.chmod(0o755)
        config = FrontendConfig(
            zookeeper=self.server.hosts,
            zookeeper_env=self.env,
            bind=f"127.0.0.1:{free_port()}",
            admin_bind=f"127.0.0.1:{free_port()}",
            run_dir=str(directory / "run"),
            temp_dir=str(directory / "tmp"),
            workers=1,
            frontend_key_file=str(self.keys[1]),
            log_level="warning",
        )
        path = write_config(config, directory / "fe.toml")
        self.fe.append(spawn([str(BIN / "bismuthfe-nginx"), "--config", str(path)]))
        self.fe.append(spawn([str(BIN / "bismuthfe"), "--config", str(path)]))
        for proc in self.fe:
            self._pin(proc)
        self.fe_config = config
        return config

    def _pin(self, proc: subprocess.Popen[bytes] | None) -> None:
        if self.pin and proc is not None:
            pin_tree(proc.pid, SERVICE_CPUS)

    def nginx_pids(self) -> list[int]:
        master = self.fe[0].pid
        children = Path(f"/proc/{master}/task/{master}/children")
        return [master, *(int(p) for p in children.read_text().split())]

    async def close(self) -> None:
        for proc in [*self.fe[::-1], *(a.proc for a in self.apis)]:
            stop(proc, timeout=20)
        await self.fleet.close()
        await self.zk.stop()
        self.server.cleanup()


async def _healthy(api: ApiProcess, http: aiohttp.ClientSession) -> bool:
    if api.proc.poll() is not None:
        raise RuntimeError(f"bismuth-api exited {api.proc.returncode}")
    return await api.health(http) is not None


def function_body(host: str, replicas: int) -> str:
    return json.dumps(
        definition(max_instances=replicas, cpu=0.05, memory=64 << 20, routes=[{"hostname": host}])
    )
