"""What container networking hands out and reports: allocations, host interfaces, errors.

Also the two small Protocols the agent programs against (STYLE rule 3): the netlink side
(:class:`ContainerNetwork`, implemented by ``links.NetworkAdapter``) and the firewall side
(:class:`ContainerFirewall`, implemented by ``firewall.Firewall``).
"""

from __future__ import annotations

import builtins
import hashlib
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Protocol

from bismuth_core.errors import BismuthError

HOST_IFNAME_PREFIX = "bth"
CONTAINER_IFNAME = "eth0"
_IFNAME_KEY_LENGTH = 15 - len(HOST_IFNAME_PREFIX)  # Linux names hold 15 characters


class NetworkError(BismuthError):
    """The kernel or ``nft`` refused a change; the message says which and why."""


class NetworkStateError(NetworkError):
    """The allocation state file cannot be read; nothing is allocated until it is fixed."""


def host_ifname(container_id: str) -> str:
    """Host-side veth name of a container: ``bth`` + 12 characters derived from its id.

    A UUID gives its first 12 hex digits, so ``ip link`` can be matched with ``ctr task ls``
    by eye; any other id gives 12 hex digits of its SHA-256, so long ids never collide by
    sharing a prefix.
    """
    try:
        key = uuid.UUID(container_id).hex
    except ValueError:
        key = hashlib.sha256(container_id.encode()).hexdigest()
    return HOST_IFNAME_PREFIX + key[:_IFNAME_KEY_LENGTH]


@dataclass(frozen=True)
class Allocation:
    """A container's subnet: the host end holds ``.1``, the container's ``eth0`` holds ``.2``.

    The host-side address is also the container's provider address: the provider listens
    there (on the provider port), and the firewall lets only this container reach it.
    """

    container_id: str
    subnet: IPv4Network

    @property
    def host_address(self) -> IPv4Address:
        return self.subnet[1]

    @property
    def container_address(self) -> IPv4Address:
        return self.subnet[2]

    @property
    def provider_address(self) -> IPv4Address:
        return self.host_address

    @property
    def host_interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.host_address}/{self.subnet.prefixlen}")

    @property
    def container_interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.container_address}/{self.subnet.prefixlen}")

    @property
    def ifname(self) -> str:
        return host_ifname(self.container_id)


@dataclass(frozen=True)
class HostInterface:
    """A bismuth veth end found on the host (``list()``), for adoption or reaping."""

    ifname: str
    index: int
    container_id: str | None  # from the interface alias; None if it was never set
    addresses: tuple[IPv4Interface, ...]
    up: bool


@dataclass(frozen=True)
class HostView:
    """What the firewall needs to know of the host: the networks of its own addresses
    (blocked for containers) and its interfaces holding them (uplinks, where replies and
    fleet traffic for containers arrive), container and loopback interfaces aside."""

    networks: tuple[IPv4Network, ...] = ()
    uplinks: tuple[str, ...] = ()


NO_HOST_VIEW = HostView()  # a firewall that knows nothing of the host: blocks, forwards nothing


@dataclass(frozen=True)
class SysctlChange:
    """A kernel setting the agent had to change (reported once at start)."""

    key: str
    before: str
    after: str


class ContainerNetwork(Protocol):
    """Veth, addresses, routes and rate limits of containers (netlink side)."""

    async def reserve(self, container_id: str) -> Allocation:
        """The container's subnet and addresses, before its namespace exists; idempotent."""

    async def setup(self, container_id: str, netns_path: str) -> Allocation:
        """Wire the container's network namespace (on its reserved subnet); idempotent."""

    async def release_others(self, known: set[str]) -> None:
        """Release the subnets of containers not in ``known`` that have no veth."""

    async def adopt(self, container_id: str, netns_path: str | None = None) -> Allocation:
        """Verify (and touch up) an existing setup without recreating it; NotFound if absent."""

    async def teardown(self, container_id: str) -> None:
        """Remove the veth and release the allocation; idempotent."""

    async def list(self) -> builtins.list[HostInterface]:
        """Bismuth veth ends on the host, including leftovers."""

    async def host_view(self) -> HostView:
        """The host's own networks and uplinks, for the firewall."""


class ContainerFirewall(Protocol):
    """The toolkit's own nftables table and the per-container elements in it."""

    async def install(self, host: HostView = NO_HOST_VIEW) -> list[SysctlChange]:
        """Create or refresh the table, keeping container elements; forward on uplinks."""

    async def attach(self, allocation: Allocation, serving_port: int | None = None) -> None:
        """Let this container reach its provider (and the outside world), and the fleet's
        frontends reach its ``serving_port``; idempotent."""

    async def detach(self, ifname: str) -> None:
        """Remove every element of that host interface; idempotent."""

    async def remove_all(self) -> list[SysctlChange]:
        """Delete the table (and turn forwarding back off where bismuth turned it on)."""
