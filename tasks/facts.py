"""Facts the Bismuth deploy decides on: what runs the daemons, and what the cluster holds.

Facts only observe. Each one's command exits 0 whatever it finds, so "not there yet" is a
value (``None`` or ``False``), never a failed host.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase


class SystemdIsInit(FactBase[bool]):
    """Whether systemd manages this host (``/run/systemd/system`` exists, as sd_booted(3))."""

    def command(self) -> str:
        return "test -d /run/systemd/system && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return output == ["yes"]

    @staticmethod
    def default() -> bool:
        return False


class SupervisordPid(FactBase[int | None]):
    """PID of the supervisord that ``config`` belongs to, or ``None`` if it does not answer."""

    def command(self, config: str) -> str:
        return f"supervisorctl -c {shlex.quote(config)} pid 2>/dev/null || true"

    def process(self, output: list[str]) -> int | None:
        text = "".join(output).strip()
        return int(text) if text.isdigit() and int(text) > 0 else None


# Run by the toolkit's own Python on the host: uses the one module that knows ZooKeeper paths.
_CLUSTER_PROBE = """
import asyncio, json, logging, sys
from bismuth_core import layout, operations
from bismuth_core.errors import Unavailable
from bismuth_core.zk import ZooKeeper

async def probe(hosts, env, ip, wait):
    zk = ZooKeeper(hosts, env)
    try:
        await zk.start(timeout=wait)
    except Unavailable:
        return {"reachable": False}
    try:
        return {
            "reachable": True,
            "bootstrapped": await operations.is_bootstrapped(zk),
            "provisioned": await zk.exists(layout.node_path(ip)) is not None,
        }
    finally:
        await zk.stop()

logging.basicConfig(level=logging.CRITICAL)
print(json.dumps(asyncio.run(probe(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))))
"""


@dataclass(frozen=True)
class ClusterState:
    """What ZooKeeper says about one environment and one node."""

    reachable: bool
    bootstrapped: bool = False
    provisioned: bool = False


class ClusterMembership(FactBase[ClusterState]):
    """Whether environment ``env`` is bootstrapped and node ``ip`` provisioned in it.

    Waits up to ``wait`` seconds for ZooKeeper to answer (it may have just been started);
    ``reachable`` is False if it never did.
    """

    def command(self, python: str, zookeeper: str, env: str, ip: str, wait: float) -> str:
        args = [python, "-W", "ignore", "-c", _CLUSTER_PROBE, zookeeper, env, ip, str(wait)]
        return shlex.join(args)

    def process(self, output: list[str]) -> ClusterState:
        data = json.loads(output[-1])
        return ClusterState(
            reachable=bool(data["reachable"]),
            bootstrapped=bool(data.get("bootstrapped")),
            provisioned=bool(data.get("provisioned")),
        )

    @staticmethod
    def default() -> ClusterState:
        return ClusterState(reachable=False)
