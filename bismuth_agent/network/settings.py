"""Settings of container networking: the subnet pool, interface group, firewall table, limits.

One frozen dataclass, filled by the agent's configuration; every field is checked when the
object is built, and a bad value raises :class:`~bismuth_core.config.ConfigError` naming it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from bismuth_core.config import ConfigError

SUBNET_PREFIX = 30  # one /30 per container: .1 on the host side, .2 inside
_FIREWALL_ID = re.compile(r"[A-Za-z0-9_]{1,24}")


@dataclass(frozen=True)
class NetworkSettings:
    """Where container subnets come from and how their traffic is limited and filtered."""

    pool: str = "10.253.0.0/16"  # IPv4 network split into /30 subnets, one per container
    interface_group: int = 0xB15  # netlink group of the host ends; firewall rules match it
    firewall_id: str = "main"  # nftables table is "inet bismuth_<firewall_id>"
    masquerade: bool = False  # NAT containers' outbound traffic behind the host's address
    provider_port: int = 9000  # the provider listens on <host side address>:provider_port
    metadata_address: str = "169.254.169.254"  # containers reach their provider here
    download_rate: int = 0  # bits/s into each container (tbf on the host end); 0 = unlimited
    upload_rate: int = 0  # bits/s out of each container (tbf on its eth0); 0 = unlimited
    rate_burst: int = 0  # bytes of the token buckets; 0 = 20 ms of the rate, at least 32 KiB
    blocked_networks: tuple[str, ...] = ()  # more destinations containers must not reach
    frontends: tuple[str, ...] = ()  # networks of the fleet's frontends (serving ports)
    state_file: str = "/var/lib/bismuth/network/allocations.json"
    host_netns: str | None = None  # netns file of the host side; None = the agent's own
    nft: str = "nft"  # the nft command

    def __post_init__(self) -> None:
        network = _network("pool", self.pool)
        if network.prefixlen > SUBNET_PREFIX:
            raise ConfigError(f"config pool: {self.pool} is smaller than one /{SUBNET_PREFIX}")
        if not 1 <= self.interface_group <= 0xFFFFFFFF:
            raise ConfigError("config interface_group: must be 1..4294967295 (0 is the default)")
        if not _FIREWALL_ID.fullmatch(self.firewall_id):
            raise ConfigError("config firewall_id: 1-24 letters, digits or '_'")
        if not 1 <= self.provider_port <= 65535:
            raise ConfigError("config provider_port: must be a TCP port (1-65535)")
        try:
            ipaddress.IPv4Address(self.metadata_address)
        except ValueError as exc:
            raise ConfigError(f"config metadata_address: {exc}") from exc
        for name in ("download_rate", "upload_rate", "rate_burst"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config {name}: must be >= 0")
        for item in self.blocked_networks:
            _network("blocked_networks", item)
        for item in self.frontends:
            _network("frontends", item)

    @property
    def pool_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pool)

    @property
    def table(self) -> str:
        """Name of the toolkit's own nftables table (family ``inet``)."""
        return f"bismuth_{self.firewall_id}"

    def burst_bytes(self, rate: int) -> int:
        """Token bucket size for ``rate`` bits/s."""
        return self.rate_burst or max(rate // 8 // 50, 32768)


def _network(name: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise ConfigError(f"config {name}: {value!r} is not an IPv4 network ({exc})") from exc
