"""Each node's container pool: its own slice of the fleet's ``container_network``.

Frontends connect straight to containers and route to each node's pool through the node's
address, so no two nodes may share a pool. Unless a host sets ``network_pool`` itself, its
pool is the ``container_pool_prefix``-sized slice of ``container_network`` numbered by its
``node_ip`` (the address modulo the number of slices): stable when hosts are added, removed
or reordered, and distinct for nodes whose addresses differ in their last bits (every node
of a subnet up to that size). Every deploy checks the whole ``agents`` group and refuses to
go on when two nodes would share a pool, naming them: set ``network_pool`` for one of them.
Changing a node's pool needs a drain first: its running containers keep their old subnets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from pyinfra import host, inventory

from tasks.roles import AGENTS, single_node


class PoolConflict(ValueError):
    """Two nodes' pools overlap, or a pool lies outside ``container_network``."""


def derived_pool(node_ip: str, container_network: str, prefix: int) -> str:
    """The slice of ``container_network`` that ``node_ip`` numbers."""
    network = ipaddress.IPv4Network(container_network)
    if not network.prefixlen <= prefix <= 30:
        raise PoolConflict(
            f"container_pool_prefix /{prefix} does not fit container_network {network}"
        )
    slices = 2 ** (prefix - network.prefixlen)
    index = int(ipaddress.IPv4Address(node_ip)) % slices
    return str(
        ipaddress.IPv4Network((int(network.network_address) + index * 2 ** (32 - prefix), prefix))
    )


def pool_of(data: Mapping[str, object]) -> str:
    """A host's pool from its data (``network_pool``, else derived)."""
    explicit = str(data.get("network_pool") or "")
    if explicit:
        return str(ipaddress.IPv4Network(explicit))
    return derived_pool(
        str(data["node_ip"]),
        str(data["container_network"]),
        int(str(data["container_pool_prefix"])),
    )


def check_pools(pools: Iterable[tuple[str, str]], container_network: str) -> None:
    """Raise :class:`PoolConflict` naming the first two hosts whose pools overlap, or a pool
    outside the fleet's container network."""
    fleet = ipaddress.IPv4Network(container_network)
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    for name, pool in pools:
        network = ipaddress.IPv4Network(pool)
        if not network.subnet_of(fleet):
            raise PoolConflict(f"{name}: pool {network} lies outside container_network {fleet}")
        for other, taken in seen:
            if network.overlaps(taken):
                raise PoolConflict(
                    f"{name} and {other} would share container pool {network} / {taken}: "
                    "set network_pool for one of them"
                )
        seen.append((name, network))


def _data(member: object) -> dict[str, object]:
    data = member.data  # type: ignore[attr-defined]
    keys = ("network_pool", "node_ip", "container_network", "container_pool_prefix")
    return {key: data.get(key) for key in keys}


def node_pool() -> str:
    """This host's pool, after checking that no two nodes of the fleet share one."""
    agents = [host] if single_node() else list(inventory.get_group(AGENTS, default=[]))
    check_pools(((m.name, pool_of(_data(m))) for m in agents), str(host.data.container_network))
    return pool_of(_data(host))
