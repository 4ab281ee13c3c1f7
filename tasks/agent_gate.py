"""The health gate of a rolling agent upgrade, run on the agent's host.

``upgrade.py`` sends this file's text to the host and runs it with the toolkit's Python
(``python -c``), which brings ``bismuth_core``:

``record FILE``
    before the agent restarts: write the PID of every running containerd task to FILE.
``wait FILE VERSION``
    after it restarted: wait until the node's ``alive`` znode shows VERSION, every
    container ZooKeeper lists for the node is ``Running``, the agent itself reports each of
    them ``Running`` (it supervises them: adopted) and every container's task is still the
    process FILE recorded. Exit 0 then; exit 1 at once if a container's task was replaced
    (the upgrade restarted it) or the service manager gave up on the agent (``--down-if``,
    a shell check), or when ``--timeout`` runs out, naming what was missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNING = "Running"


@dataclass(frozen=True)
class Observation:
    """One look at the node: what ZooKeeper, the agent and containerd say."""

    version: str | None  # in the alive znode; None: the agent is not alive
    statuses: dict[str, str]  # container id -> status in ZooKeeper ("Pending": none yet)
    supervised: dict[str, int] | None  # the agent's own status counts; None: no answer
    pids: dict[str, int]  # container id -> PID of its running task
    service_down: bool = False  # the service manager says the agent does not stay up


@dataclass(frozen=True)
class Verdict:
    passed: bool
    fatal: bool  # waiting longer cannot help
    reasons: tuple[str, ...]


def judge(seen: Observation, version: str, recorded: dict[str, int]) -> Verdict:
    """Whether ``seen`` passes the gate for ``version``, given the PIDs recorded before."""
    replaced = [
        f"container {cid}: task PID {pid} before the restart, {seen.pids.get(cid, 'none')} now"
        for cid, pid in sorted(recorded.items())
        if cid in seen.statuses and seen.pids.get(cid) != pid
    ]
    if replaced:
        return Verdict(False, True, tuple(replaced))
    if seen.service_down:
        return Verdict(False, True, ("its service manager says the agent does not stay up",))
    reasons = []
    if seen.version is None:
        reasons.append("the agent is not alive in ZooKeeper")
    elif seen.version != version:
        reasons.append(f"the live agent reports version {seen.version}, not {version}")
    waiting = sorted(cid for cid, status in seen.statuses.items() if status != RUNNING)
    reasons += [f"container {cid} is {seen.statuses[cid]}" for cid in waiting]
    if seen.supervised is None:
        reasons.append("the agent's /healthz does not answer")
    elif seen.supervised != ({RUNNING: len(seen.statuses)} if seen.statuses else {}):
        reasons.append(f"the agent supervises {seen.supervised}, not {len(seen.statuses)} Running")
    return Verdict(not reasons, False, tuple(reasons))


def task_pids(ctr: list[str]) -> dict[str, int]:
    """Container id -> PID of every RUNNING task (``ctr tasks ls``)."""
    listing = subprocess.run([*ctr, "tasks", "ls"], capture_output=True, text=True, check=True)
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    return {row[0]: int(row[1]) for row in rows if len(row) >= 3 and row[2] == "RUNNING"}


def agent_counts(url: str) -> dict[str, int] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            counts = json.load(response).get("containers")
    except (OSError, ValueError):
        return None
    return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else None


async def observe(zk: object, args: argparse.Namespace) -> Observation:
    from bismuth_core.cluster import PENDING, read_node

    node = await read_node(zk, args.node, with_status=True)  # type: ignore[arg-type]
    statuses = {
        str(cid): view.status.label if view.status is not None else PENDING
        for cid, view in (node.containers.items() if node else ())
    }
    return Observation(
        version=node.alive.version if node and node.alive else None,
        statuses=statuses,
        supervised=await asyncio.to_thread(agent_counts, args.agent_url),
        pids=await asyncio.to_thread(task_pids, ctr_command(args)),
        service_down=bool(args.down_if) and await asyncio.to_thread(holds, args.down_if),
    )


def holds(check: str) -> bool:
    """Whether the shell command ``check`` exits 0."""
    return subprocess.run(check, shell=True, capture_output=True).returncode == 0


async def wait(args: argparse.Namespace) -> int:
    from bismuth_core.errors import Unavailable
    from bismuth_core.zk import ZooKeeper

    recorded = {str(k): int(v) for k, v in json.loads(Path(args.file).read_text()).items()}
    started = time.monotonic()
    deadline = started + args.timeout
    zk = ZooKeeper(args.zookeeper, args.env, **session_access(args.cluster_key_file))
    try:
        await zk.start(timeout=args.timeout)
    except Unavailable as exc:
        print(f"agent of {args.node}: no health gate without ZooKeeper: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            seen = await observe(zk, args)
            verdict = judge(seen, args.version, recorded)
            if verdict.passed:
                print(
                    f"agent of {args.node} on {args.version}: {len(seen.statuses)} container(s)"
                    f" adopted and Running, task PIDs unchanged"
                    f" ({time.monotonic() - started:.1f} s)"
                )
                return 0
            if verdict.fatal or time.monotonic() > deadline:
                why = "; ".join(verdict.reasons)
                limit = "" if verdict.fatal else f" within {args.timeout:g} s"
                print(f"agent of {args.node} failed its health gate{limit}: {why}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
    finally:
        await zk.stop()


def session_access(key_file: str) -> dict[str, Any]:
    """The cluster's ZooKeeper access, from its key; none with a version from before ACLs
    (the gate runs the old version's Python, and such a cluster's tree has no ACLs yet)."""
    try:
        from bismuth_core.credentials import cluster_credentials, writer_access
    except ImportError:
        return {}
    return {"access": writer_access(cluster_credentials(file=key_file))}


def ctr_command(args: argparse.Namespace) -> list[str]:
    return ["ctr", "-a", args.containerd, "-n", args.namespace]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agent-gate", description=__doc__)
    parser.add_argument("action", choices=("record", "wait"))
    parser.add_argument("file")
    parser.add_argument("version", nargs="?", default="")
    parser.add_argument("--containerd", required=True, metavar="SOCKET")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--zookeeper", default="127.0.0.1:2181")
    parser.add_argument("--env", default="default")
    parser.add_argument("--cluster-key-file", default="/etc/bismuth/cluster.key")
    parser.add_argument("--node", default="127.0.0.1")
    parser.add_argument("--agent-url", default="http://127.0.0.1:8001/healthz")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--down-if", default="", metavar="SHELL")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.CRITICAL)
    if args.action == "record":
        Path(args.file).write_text(json.dumps(task_pids(ctr_command(args))) + "\n")
        return 0
    return asyncio.run(wait(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
