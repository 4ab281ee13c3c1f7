"""What a lab looks like, computed without touching the machine.

The address plan (bridge ``.1``, hosts ``.11``, ``.12``, ...), the names of namespaces and
links, which directories each lab host keeps private, and the files each host gets (its
sshd configuration, ``/etc/hosts``, ``/etc/hostname``, an empty ``resolv.conf``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SUBNET = "10.250.0.0/24"
DEFAULT_BRIDGE = "bislab0"
DEFAULT_PREFIX = "lab"
FIRST_HOST_OFFSET = 11  # hosts get .11, .12, ...; the bridge (the machine) gets .1

# Directories each lab host gets a private copy of: a per-host directory of the state dir
# is bind-mounted over each. A fleet deploy onto lab hosts may write only below these (and
# TMPFS_DIRS) if hosts are to stay apart; everything else is the machine's, shared.
PRIVATE_DIRS: tuple[str, ...] = (
    "/etc/bismuth",
    "/var/lib/bismuth",
    "/var/log/bismuth",
    "/opt/bismuth",
    "/etc/zookeeper",
    "/var/lib/zookeeper",
    "/var/log/zookeeper",
    "/etc/containerd",
    "/var/lib/containerd",
)
# Directories each lab host gets an empty tmpfs over (runtime state, sockets, scratch).
TMPFS_DIRS: tuple[str, ...] = ("/run/bismuth", "/run/containerd", "/tmp")
# sshd's privilege separation directory: must exist, may be shared.
SSHD_PRIVSEP_DIR = "/run/sshd"

_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")
_IFNAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_IFNAME_MAX = 15


class PlanError(ValueError):
    """A lab setting that cannot work (bad subnet, name too long, too many hosts)."""


@dataclass(frozen=True)
class HostPlan:
    """One lab host: its name (also its netns and hostname), address and bridge-side veth."""

    index: int
    name: str
    address: str
    veth: str


@dataclass(frozen=True)
class LabPlan:
    """The settings of one lab: subnet, bridge and host-name prefix."""

    subnet: str = DEFAULT_SUBNET
    bridge: str = DEFAULT_BRIDGE
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError as exc:
            raise PlanError(f"subnet {self.subnet!r}: {exc}") from None
        if net.version != 4 or net.num_addresses < FIRST_HOST_OFFSET + 2:
            raise PlanError(f"subnet {self.subnet!r}: need an IPv4 subnet of /28 or larger")
        if not _IFNAME.match(self.bridge) or len(self.bridge) > _IFNAME_MAX - 4:
            raise PlanError(
                f"bridge {self.bridge!r}: need letters, digits, '-' or '_', at most "
                f"{_IFNAME_MAX - 4} characters (host links are named <bridge>-<N>)"
            )
        if not _NAME.match(self.prefix) or len(self.prefix) > 40:
            raise PlanError(
                f"prefix {self.prefix!r}: need lowercase letters, digits or '-', starting "
                "with a letter, at most 40 characters"
            )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The machine's address on the bridge."""
        return str(self.network.network_address + 1)

    @property
    def max_hosts(self) -> int:
        return self.network.num_addresses - FIRST_HOST_OFFSET - 1

    def hosts(self, n: int) -> list[HostPlan]:
        if not 1 <= n <= self.max_hosts:
            raise PlanError(f"host count {n}: must be 1 to {self.max_hosts} in {self.subnet}")
        base = self.network.network_address + FIRST_HOST_OFFSET
        return [
            HostPlan(i, f"{self.prefix}{i}", str(base + i - 1), f"{self.bridge}-{i}")
            for i in range(1, n + 1)
        ]


def render_sshd_config(
    host: HostPlan, host_key: Path, authorized_keys: Path, sftp: str = "internal-sftp"
) -> str:
    """sshd_config for one lab host: only its address, only the lab's key, as root."""
    return "\n".join(
        [
            f"# sshd of lab host {host.name}",
            f"ListenAddress {host.address}:22",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PidFile none",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "MaxStartups 100:30:200",
            "AcceptEnv LANG LC_*",
            f"Subsystem sftp {sftp}",
            "",
        ]
    )


def render_etc_hosts(hosts: list[HostPlan]) -> str:
    """/etc/hosts of every lab host: loopback, then each lab host by name."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address}\t{h.name}" for h in hosts]
    return "\n".join(lines) + "\n"


def host_dir_for(state_dir: Path, name: str) -> Path:
    """Where one host's files live in the state dir."""
    return state_dir / "hosts" / name


def private_source(host_dir: Path, target: str) -> Path:
    """The per-host directory bind-mounted over ``target`` (e.g. ``root/etc/bismuth``)."""
    return host_dir / "root" / target.lstrip("/")
