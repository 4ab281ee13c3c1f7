"""A fleet of lab hosts deployed by pyinfra, as the fleet tests drive and inspect it.

Everything the deploy reads on the control side is private to the test: the cluster key, the
wheelhouse and the source tree the toolkit is built from (a snapshot of this checkout, so
edits made while the test runs change nothing). Hosts are reached the way an operator does:
pyinfra with ``inventories/lab.py``, ssh as root, ``bismuthctl`` of the installed toolkit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bismuth_lab import Lab
from bismuth_lab.state import HostState
from tasks.wheelhouse import source_files
from tests.deploy.pyinfra_runs import REPO, clean_env, data_args, output, run

PYINFRA = Path(sys.prefix) / "bin" / "pyinfra"
TOOLKIT = "/opt/bismuth"
CTR = "ctr -a /run/containerd/containerd.sock -n bismuth"
RUN_TIMEOUT = 600.0


def free_subnet(first_octets: str = "10.251") -> str:
    """A ``<first_octets>.x.0/24`` that no interface on this machine uses."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    used = [
        ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in json.loads(out.stdout)
        for a in link.get("addr_info", [])
    ]
    for x in random.sample(range(256), 256):
        net = ipaddress.ip_network(f"{first_octets}.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise AssertionError(f"no free {first_octets}.x.0/24 subnet")


def snapshot_source(target: Path) -> Path:
    """Copy the files the toolkit's wheel is built from into ``target``."""
    for relative in source_files(REPO):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target / relative)
    return target


@dataclass
class Fleet:
    """A lab under ``root``, and the control side of its deploys."""

    root: Path
    lab: Lab = field(init=False)
    figures: dict[str, str] = field(default_factory=dict)  # what the tests measured
    notes: dict[str, str] = field(default_factory=dict)  # what later tests build on

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.lab = Lab(self.root / "lab", free_subnet(), f"bft{tag}", f"f{tag}h")
        self.control = self.root / "control"
        self.control.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.source = snapshot_source(self.control / "source")

    @property
    def hosts(self) -> list[HostState]:
        return self.lab.hosts()

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    @property
    def zookeeper(self) -> str:
        return ",".join(f"{a}:2181" for a in self.addresses)

    def data(self, **extra: Any) -> dict[str, str]:
        return {
            "cluster_key_source": str(self.control / "cluster.key"),
            "wheelhouse_dir": str(self.control / "wheelhouse"),
            "toolkit_source": str(self.source),
            **{k: str(v) for k, v in extra.items()},
        }

    def pyinfra_args(self, deploy_file: str, **extra: Any) -> list[str]:
        args = [str(PYINFRA), "-y", "inventories/lab.py", deploy_file]
        return [*args, *data_args(self.data(**extra))]

    def env(self) -> dict[str, str]:
        return clean_env(BISMUTH_LAB_STATE=str(self.lab.state_dir))

    def pyinfra(self, deploy_file: str, **extra: Any) -> Run:
        began = time.monotonic()
        result = run(self.pyinfra_args(deploy_file, **extra), RUN_TIMEOUT, self.env())
        return Run(result, time.monotonic() - began)

    def ssh(self, host: HostState | str, script: str, timeout: float = 60.0) -> str:
        done = self.lab.ssh(host, ["sh", "-c", script], timeout=timeout)
        name = host if isinstance(host, str) else host.name
        assert done.returncode == 0, f"{name}: {script!r}: exit {done.returncode}: {done.stderr}"
        return done.stdout

    def bismuthctl(self, *args: str) -> Any:
        """``bismuthctl --json ...`` of the first host's installed toolkit."""
        argv = [f"{TOOLKIT}/current/bin/bismuthctl", "--zookeeper", self.zookeeper, "--json"]
        return json.loads(self.ssh(self.hosts[0], shlex.join([*argv, *args])))

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the API (loopback-only, on the first host) through ssh and curl, as the
        operator: the deploy's admin token goes as a header read from stdin."""
        argv = ["curl", "-sS", "--fail-with-body", "-H", "@-", "-X", method]
        argv.append(f"http://127.0.0.1:8002{path}")
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        header = "printf 'Authorization: Bearer %s\\n' \"$(cat /etc/bismuth/admin.token)\""
        text = self.ssh(self.hosts[0], f"{header} | {shlex.join(argv)}")
        return json.loads(text) if text.strip() else None

    def task_pids(self) -> dict[str, int]:
        """Container id -> PID of its task, over every host."""
        found: dict[str, int] = {}
        for h in self.hosts:
            rows = [line.split() for line in self.ssh(h, f"{CTR} tasks ls").splitlines()[1:]]
            found.update({row[0]: int(row[1]) for row in rows if row[2:3] == ["RUNNING"]})
        return found

    def agent_pid(self, host: HostState) -> int:
        conf = "/etc/bismuth/supervisord.conf"
        return int(self.ssh(host, f"supervisorctl -c {conf} pid bismuth-agent").strip())

    def link(self, host: HostState, name: str) -> str:
        return self.ssh(host, f"readlink {TOOLKIT}/{name}").strip()

    def frontend(self) -> str:
        return f"http://{self.hosts[0].address}:8000/"


@contextlib.contextmanager
def outsider(
    fleet: Fleet, routes: Mapping[str, str] | None = None
) -> Iterator[Callable[[str, int], bool]]:
    """A machine on the fleet's network that is not in the inventory: a namespace of its
    own on the lab's bridge, with the subnet's last address and ``routes`` (network -> via)
    of its own. Yields ``reaches(addr, port)``."""
    plan = fleet.lab.plan
    name, link = f"{plan.prefix}out", f"{plan.bridge}-o"
    address = str(plan.network.broadcast_address - 1)
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", link, "type", "veth", "peer", "eth0", "netns", name],
        ["ip", "link", "set", link, "master", plan.bridge, "up"],
        ["ip", "-n", name, "addr", "add", f"{address}/{plan.network.prefixlen}", "dev", "eth0"],
        ["ip", "-n", name, "link", "set", "eth0", "up"],
        *(
            ["ip", "-n", name, "route", "add", net, "via", via]
            for net, via in (routes or {}).items()
        ),
    ]

    def reaches(target: str, port: int) -> bool:
        probe = f"import socket; socket.create_connection(('{target}', {port}), timeout=2)"
        argv = ["ip", "netns", "exec", name, sys.executable, "-c", probe]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    try:
        for argv in commands:
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
        yield reaches
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@dataclass(frozen=True)
class Run:
    """One pyinfra run and how long it took."""

    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def text(self) -> str:
        return self.result.stdout + self.result.stderr

    def describe(self) -> str:
        return output(self.result)
