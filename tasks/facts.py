"""Facts the Bismuth deploy decides on: what runs the daemons, what the cluster holds,
which images containerd has, whether the sample function answers, and whether a host holds
a wheelhouse intact.

Facts only observe. Each one's command exits 0 whatever it finds, so "not there yet" is a
value (``None`` or ``False``), never a failed host.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

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
from bismuth_core import layout, operations, treeacl
from bismuth_core.credentials import cluster_credentials, writer_access
from bismuth_core.errors import AccessDenied, Unavailable
from bismuth_core.zk import ZooKeeper

async def probe(hosts, env, ip, wait, key_file):
    zk = ZooKeeper(hosts, env, access=writer_access(cluster_credentials(file=key_file)))
    try:
        await zk.start(timeout=wait)
    except Unavailable:
        return {"reachable": False}
    try:
        return {
            "reachable": True,
            "bootstrapped": await operations.is_bootstrapped(zk),
            "secured": await treeacl.is_secured(zk),
            "provisioned": await zk.exists(layout.node_path(ip)) is not None,
        }
    except AccessDenied:  # the tree has another cluster's ACLs: bootstrap will say so
        return {"reachable": True}
    finally:
        await zk.stop()

logging.basicConfig(level=logging.CRITICAL)
hosts, env, ip, wait, key_file = sys.argv[1:]
print(json.dumps(asyncio.run(probe(hosts, env, ip, float(wait), key_file))))
"""


@dataclass(frozen=True)
class ClusterState:
    """What ZooKeeper says about one environment and one node."""

    reachable: bool
    bootstrapped: bool = False
    secured: bool = False  # every znode has the cluster's ACLs
    provisioned: bool = False


class ClusterMembership(FactBase[ClusterState]):
    """Whether environment ``env`` is bootstrapped (and its tree has the cluster's ACLs) and
    node ``ip`` provisioned in it, asked as the cluster (with the key in ``key_file``).

    Waits up to ``wait`` seconds for ZooKeeper to answer (it may have just been started);
    ``reachable`` is False if it never did.
    """

    def command(
        self, python: str, zookeeper: str, env: str, ip: str, wait: float, key_file: str
    ) -> str:
        probe = [python, "-W", "ignore", "-c", _CLUSTER_PROBE]
        return shlex.join([*probe, zookeeper, env, ip, str(wait), key_file])

    def process(self, output: list[str]) -> ClusterState:
        data = json.loads(output[-1])
        return ClusterState(
            reachable=bool(data["reachable"]),
            bootstrapped=bool(data.get("bootstrapped")),
            secured=bool(data.get("secured")),
            provisioned=bool(data.get("provisioned")),
        )

    @staticmethod
    def default() -> ClusterState:
        return ClusterState(reachable=False)


class ContainerdImages(FactBase[list[str]]):
    """Names of the images in one namespace of the containerd at ``address`` ([] if it is down)."""

    def command(self, address: str, namespace: str) -> str:
        ctr = shlex.join(["ctr", "-a", address, "-n", namespace, "images", "ls", "-q"])
        return f"{ctr} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


# Run from the toolkit's checkout: the base image build's own check (digests, name, platform).
_ARCHIVE_PROBE = """
import logging, sys
from pathlib import Path
from bismuth_images.build import BuildOptions, existing_image, host_architecture

logging.basicConfig(level=logging.CRITICAL)
options = BuildOptions(output=Path(sys.argv[1]), reference=sys.argv[2])
print("valid" if existing_image(options, host_architecture()) else "invalid")
"""


class ImageArchiveValid(FactBase[bool]):
    """Whether ``path`` is a complete OCI archive of ``reference`` for this host's platform.

    Asks ``bismuth_images.build`` (in the checkout ``source``) exactly what it asks before
    skipping a build, so "valid" here means a build would change nothing.
    """

    def command(self, python: str, source: str, path: str, reference: str) -> str:
        probe = shlex.join([python, "-c", _ARCHIVE_PROBE, path, reference])
        return f"cd {shlex.quote(source)} && {probe} 2>/dev/null || echo invalid"

    def process(self, output: list[str]) -> bool:
        return output[-1:] == ["valid"]

    @staticmethod
    def default() -> bool:
        return False


def _bismuthctl_listing(output: list[str], key: str) -> list[dict[str, Any]]:
    """The ``key`` list of ``bismuthctl --json`` output; [] if it printed none (ZooKeeper down)."""
    try:
        document = json.loads("\n".join(output))
    except ValueError:
        return []
    items = document.get(key) if isinstance(document, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


class AliveNodes(FactBase[list[str]]):
    """IPs of the nodes whose agent is alive, as ``bismuthctl --json nodes`` lists them.

    ``bismuthctl`` is the command line up to the subcommand (ensemble and environment set).
    """

    def command(self, bismuthctl: str) -> str:
        return f"{bismuthctl} --json nodes 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [str(n["ip"]) for n in _bismuthctl_listing(output, "nodes") if n.get("alive")]

    @staticmethod
    def default() -> list[str]:
        return []


class RoutedHostnames(FactBase[list[str]]):
    """Hostnames the environment's functions answer, from ``bismuthctl --json functions``."""

    def command(self, bismuthctl: str) -> str:
        return f"{bismuthctl} --json functions 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        functions = _bismuthctl_listing(output, "functions")
        return [str(route) for function in functions for route in function.get("routes", [])]

    @staticmethod
    def default() -> list[str]:
        return []


class NftTableComment(FactBase[str | None]):
    """The comment of nftables table ``inet <table>``, "" without one; ``None`` if absent."""

    def command(self, table: str) -> str:
        return f"nft list table inet {shlex.quote(table)} 2>/dev/null || echo '<absent>'"

    def process(self, output: list[str]) -> str | None:
        if output[-1:] == ["<absent>"]:
            return None
        for line in output:
            stripped = line.strip()
            if stripped.startswith('comment "') and stripped.endswith('"'):
                return stripped[len('comment "') : -1]
        return ""


class RegisteredTokens(FactBase[list[str]]):
    """Ids of the environment's admin tokens, from ``bismuthctl --json token list``."""

    def command(self, bismuthctl: str) -> str:
        return f"{bismuthctl} --json token list 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        found = _bismuthctl_listing(output, "tokens")
        return [str(t["id"]) for t in found if t.get("scope") == "admin"]

    @staticmethod
    def default() -> list[str]:
        return []


class HttpStatus(FactBase[int | None]):
    """Status of ``GET url`` with ``Host: host_header``, or ``None`` if nothing answered."""

    def command(self, url: str, host_header: str) -> str:
        return f"{http_probe(url, host_header)} || true"

    def process(self, output: list[str]) -> int | None:
        text = "".join(output).strip()
        return int(text) if text.isdigit() and int(text) > 0 else None


def http_probe(url: str, host_header: str, timeout: float = 5.0) -> str:
    """Shell: print the status code of ``GET url`` (``000`` if nothing answered)."""
    return shlex.join(
        [
            "curl",
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-m",
            str(timeout),
            "-w",
            "%{http_code}",
            "-H",
            f"Host: {host_header}",
            url,
        ]
    )


class WheelhouseChecksum(FactBase[str | None]):
    """sha256 of ``<path>/SHA256SUMS`` if every file it lists is there and intact, else ``None``.

    Equal to :attr:`tasks.wheelhouse.Wheelhouse.build_id` when the host holds that very
    wheelhouse: one command, however many wheels it has.
    """

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            f"cd {quoted} 2>/dev/null && sha256sum --status -c SHA256SUMS 2>/dev/null "
            "&& sha256sum < SHA256SUMS || true"
        )

    def process(self, output: list[str]) -> str | None:
        words = "".join(output).split()
        return words[0] if words else None


class StaleCheckoutInstalls(FactBase[list[str]]):
    """Checkout installs (``<toolkit_dir>/*+checkout.*``) other than ``keep`` that no running
    process has on its command line (providers of earlier edits still use theirs)."""

    def command(self, toolkit_dir: str, keep: str) -> str:
        top = toolkit_dir.rstrip("/")
        kept = shlex.quote(f"{top}/{keep}")
        return (
            f'for d in {shlex.quote(top)}/*+checkout.*; do [ -d "$d" ] && [ "$d" != {kept} ] '
            "|| continue; used=; for c in /proc/[0-9]*/cmdline; do "
            'grep -qzF -- "$d/" "$c" 2>/dev/null && { used=1; break; }; done; '
            '[ -n "$used" ] || echo "$d"; done; true'
        )

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class MissingKernelModules(FactBase[list[str]]):
    """Which of ``modules`` are neither loaded nor built into the kernel.

    A kernel without loadable modules (no ``/proc/modules``) has everything built in.
    """

    def command(self, modules: list[str]) -> str:
        builtin = '"/lib/modules/$(uname -r)/modules.builtin"'
        checks = [
            f"[ -d /sys/module/{name} ] || grep -q '/{name}.ko' {builtin} 2>/dev/null "
            f"|| grep -q '^{name} ' /proc/modules || echo {name}"
            for name in map(shlex.quote, modules)
        ]
        return f"[ -e /proc/modules ] || exit 0; {'; '.join(checks)}; true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []
