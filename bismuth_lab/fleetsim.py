"""A simulated fleet: N agents on ZooKeeper, many per process, driven from asyncio.

Each node is a :class:`~bismuth_lab.simnode.SimNode` (a ZooKeeper session of its own, its
``alive`` znode, statuses written as the agent writes them). Nodes are spread over worker
processes of ``per_worker`` nodes each (kazoo runs threads per session, and one Python
process does not keep up with a thousand of them), each worker answering JSON commands on
its stdin. Node addresses are taken from 127.64.0.0/10 (loopback: a frontend that ever
connected to a node would stay on this machine); containers serve on each worker's own
loopback HTTP server.

Used by ``bench/scale.py`` and the simulator's tests; by hand::

    python -m bismuth_lab.fleetsim --zookeeper HOST:PORT --zookeeper-env ENV \\
        --cluster-key-file /etc/bismuth/cluster.key --nodes 100

runs 100 simulated nodes against that environment until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bismuth_core.credentials import cluster_credentials, writer_access
from bismuth_core.layout import Backend, ServingEndpoint

from .simnode import NodeGroup, serve_commands

log = logging.getLogger(__name__)

PER_WORKER = 200  # nodes per worker process
THREAD_STACK = 512 << 10  # kazoo starts threads per session: keep their stacks small


class FleetError(Exception):
    """A worker process failed or refused a command."""


def sim_ips(count: int, first: int = 0) -> list[str]:
    """``count`` node addresses (loopback, 127.64.0.1 onwards), skipping the ``first``."""
    return [
        f"127.{64 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"
        for i in range(first, first + count)
    ]


@dataclass(frozen=True)
class FleetStats:
    nodes: int
    containers: int  # container znodes the live nodes know of
    running: int
    failed: int
    last_running: float  # wall-clock time of the latest Running write (0: none)


class _Worker:
    """One worker process and its command channel (one command at a time)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.nodes: set[str] = set()
        self._lock = asyncio.Lock()

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps(command).encode() + b"\n")
            await self.proc.stdin.drain()
            return await self.read()

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise FleetError(f"fleet worker {self.proc.pid} exited ({self.proc.returncode})")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise FleetError(f"fleet worker {self.proc.pid}: {answer.get('error')}")
        return answer


class Fleet:
    """Simulated nodes of one environment; ``await add(...)``, finally ``await close()``."""

    def __init__(
        self,
        zookeeper: str,
        env: str,
        cluster_key_file: str,
        *,
        per_worker: int = PER_WORKER,
        session_timeout: float = 10.0,
    ) -> None:
        self.zookeeper, self.env, self.key_file = zookeeper, env, cluster_key_file
        self.per_worker = per_worker
        self.session_timeout = session_timeout
        self.workers: list[_Worker] = []

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    @property
    def nodes(self) -> list[str]:
        return sorted(ip for w in self.workers for ip in w.nodes)

    async def add(
        self,
        ips: Sequence[str],
        *,
        start_delay: float = 0.0,
        outcome: str = "running",
        cpus: float = 64.0,
        memory: int = 256 << 30,
    ) -> None:
        """Start nodes ``ips`` (provisioned if they are not), each alive once this returns."""
        plan: dict[_Worker, list[str]] = {}
        pending = [ip for ip in ips if ip not in self.nodes]
        for worker in [*self.workers]:
            room = self.per_worker - len(worker.nodes)
            if room > 0 and pending:
                plan[worker], pending = pending[:room], pending[room:]
        while pending:
            worker = await self._spawn()
            plan[worker], pending = pending[: self.per_worker], pending[self.per_worker :]
        command = {
            "op": "start",
            "start_delay": start_delay,
            "outcome": outcome,
            "cpus": cpus,
            "memory": memory,
            "session_timeout": self.session_timeout,
        }
        await asyncio.gather(*(w.call({**command, "nodes": n}) for w, n in plan.items()))
        for worker, names in plan.items():
            worker.nodes.update(names)

    async def stop(self, ips: Iterable[str]) -> None:
        """End these nodes' sessions at once, as hosts that are lost."""
        wanted = set(ips)
        calls = []
        for worker in self.workers:
            mine = sorted(worker.nodes & wanted)
            if mine:
                worker.nodes -= set(mine)
                calls.append(worker.call({"op": "stop", "nodes": mine}))
        await asyncio.gather(*calls)

    async def behave(
        self,
        ips: Iterable[str] | None = None,
        *,
        start_delay: float = 0.0,
        outcome: str = "running",
        idle: bool = False,
    ) -> None:
        """How containers new to these nodes (all: None) start from now on (``idle``: not
        at all)."""
        command = {"op": "behave", "start_delay": start_delay, "outcome": outcome, "idle": idle}
        wanted = None if ips is None else set(ips)
        calls = []
        for worker in self.workers:
            mine = sorted(worker.nodes if wanted is None else worker.nodes & wanted)
            if mine:
                calls.append(worker.call({**command, "nodes": mine}))
        await asyncio.gather(*calls)

    async def fail(self, backends: Iterable[Backend]) -> int:
        """Mark these containers Failed, as an agent whose container died; how many were."""
        per_worker: dict[_Worker, list[list[str]]] = {}
        for backend in backends:
            for worker in self.workers:
                if backend.ip in worker.nodes:
                    per_worker.setdefault(worker, []).append(
                        [backend.ip, str(backend.container_id)]
                    )
        answers = await asyncio.gather(
            *(w.call({"op": "fail", "containers": c}) for w, c in per_worker.items())
        )
        return sum(int(a["failed"]) for a in answers)

    async def stats(self) -> FleetStats:
        answers = await asyncio.gather(*(w.call({"op": "stats"}) for w in self.workers))
        return FleetStats(
            nodes=sum(a["nodes"] for a in answers),
            containers=sum(a["containers"] for a in answers),
            running=sum(a["running"] for a in answers),
            failed=sum(a["failed"] for a in answers),
            last_running=max((a["last_running"] for a in answers), default=0.0),
        )

    async def close(self) -> None:
        """Stop every node and worker (their sessions close)."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                assert worker.proc.stdin is not None
                worker.proc.stdin.write(b'{"op": "quit"}\n')
                await worker.proc.stdin.drain()
                worker.proc.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.proc.wait(), 30)
            except TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()
        self.workers = []

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bismuth_lab.fleetsim",
            "--worker",
            "--zookeeper",
            self.zookeeper,
            "--zookeeper-env",
            self.env,
            "--cluster-key-file",
            self.key_file,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        worker = _Worker(proc)
        self.workers.append(worker)
        await worker.read()  # ready
        return worker


# --- processes ----------------------------------------------------------------------------


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def run_worker(args: argparse.Namespace) -> None:
    """A worker: nodes on command from stdin, containers served on one loopback port."""
    threading.stack_size(THREAD_STACK)
    access = writer_access(cluster_credentials(file=args.cluster_key_file))
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    group = NodeGroup(
        args.zookeeper, args.zookeeper_env, access, ServingEndpoint("127.0.0.1", port)
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ok": True, "port": port}), flush=True)
    try:
        await serve_commands(group, reader)
    finally:
        await group.close()
        await runner.cleanup()


async def run_fleet(args: argparse.Namespace) -> None:
    """``--nodes`` simulated nodes until interrupted."""
    fleet = Fleet(args.zookeeper, args.zookeeper_env, args.cluster_key_file)
    try:
        await fleet.add(sim_ips(args.nodes), start_delay=args.start_delay)
        print(f"{args.nodes} simulated nodes alive (worker pids {fleet.pids}); Ctrl-C stops them")
        while True:
            await asyncio.sleep(10)
            stats = await fleet.stats()
            print(f"{stats.nodes} nodes, {stats.containers} containers, {stats.running} running")
    finally:
        await fleet.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bismuth_lab.fleetsim", description=__doc__)
    parser.add_argument("--zookeeper", default="127.0.0.1:2181")
    parser.add_argument("--zookeeper-env", default="default")
    parser.add_argument("--cluster-key-file", default="/etc/bismuth/cluster.key")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # sessions closing are expected
    warnings.filterwarnings("ignore", "No chroot path exists")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(args) if args.worker else run_fleet(args))


if __name__ == "__main__":
    main()
