"""Routes from a frontend host to each node's container pool, through the node's address.

Every agent announces its node's container pool in its ``alive`` znode; nginx connects to a
container's own address, so a frontend host needs ``<pool> via <node ip>`` for every other
node. The controller keeps those routes in the kernel's main table, marked with protocol
:data:`ROUTE_PROTOCOL` so it recognises its own and never touches anyone else's:

- a live node with a pool gets its route (replaced if its address or pool changed);
- a node that is provisioned but not alive keeps the route it has: an agent restarting
  does not take its containers away (their traffic never went through it);
- a route whose node is no longer provisioned, or whose pool a live node now announces
  differently, goes;
- nodes whose address is one of this host's own are skipped (their containers' /30s are
  routed locally), and so is a pool overlapping one already routed (the deploy assigns
  distinct pools; the conflict is logged);
- with ``container_network`` set, only pools inside it are considered, and only routes to
  them are ever changed.

:func:`plan_routes` is pure; :class:`KernelRoutes` is the only code here touching netlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .cache import RouteCache

log = logging.getLogger(__name__)

ROUTE_PROTOCOL = 177  # "bismuth" in `ip route ... proto 177`; unassigned in rt_protos


@dataclass(frozen=True)
class RoutePlan:
    add: dict[str, str] = field(default_factory=dict)  # pool -> gateway (add or replace)
    remove: list[str] = field(default_factory=list)  # pools
    conflicts: list[str] = field(default_factory=list)  # why a node's pool was skipped


def plan_routes(
    nodes: Set[str],
    pools: Mapping[str, str],
    local: Set[str],
    existing: Mapping[str, str],
) -> RoutePlan:
    """What to change so that ``existing`` (pool -> gateway) routes the nodes' pools.

    ``nodes``: provisioned nodes; ``pools``: live node -> its pool; ``local``: this host's
    addresses.
    """
    wanted: dict[str, str] = {}
    conflicts: list[str] = []
    claimed = {pool for ip, pool in pools.items() if pool}
    keep = {p: gw for p, gw in existing.items() if gw in nodes and gw not in pools}
    candidates = sorted({ip: p for ip, p in pools.items() if p and ip not in local}.items())
    for pool, gateway in sorted(keep.items()):
        if pool not in claimed:
            wanted[pool] = gateway
    for ip, pool in candidates:
        clash = _overlapping(pool, wanted)
        if clash is not None:
            conflicts.append(f"pool {pool} of node {ip} overlaps {clash} of node {wanted[clash]}")
            continue
        wanted[pool] = ip
    add = {p: gw for p, gw in wanted.items() if existing.get(p) != gw}
    remove = sorted(p for p in existing if p not in wanted)
    return RoutePlan(add, remove, conflicts)


def _overlapping(pool: str, routed: Mapping[str, str]) -> str | None:
    network = ipaddress.IPv4Network(pool)
    for other in routed:
        if network.overlaps(ipaddress.IPv4Network(other)):
            return other
    return None


class KernelRoutes:
    """The kernel's routes of protocol :data:`ROUTE_PROTOCOL`, through pyroute2."""

    def existing(self) -> dict[str, str]:
        with IPRoute() as ipr:
            found = ipr.get_routes(family=socket.AF_INET, proto=ROUTE_PROTOCOL)
            return {_dst(msg): str(msg.get_attr("RTA_GATEWAY")) for msg in found}

    def local_addresses(self) -> set[str]:
        with IPRoute() as ipr:
            return {str(msg.get_attr("IFA_ADDRESS")) for msg in ipr.get_addr(family=socket.AF_INET)}

    def replace(self, pool: str, gateway: str) -> None:
        with IPRoute() as ipr:
            ipr.route("replace", dst=pool, gateway=gateway, proto=ROUTE_PROTOCOL)

    def remove(self, pool: str) -> None:
        with IPRoute() as ipr, contextlib.suppress(NetlinkError):
            ipr.route("del", dst=pool, proto=ROUTE_PROTOCOL)


def _dst(msg: Any) -> str:
    return f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"


class NodeRouter:
    """Applies :func:`plan_routes` on every routing-table change and every ``interval``,
    to the pools inside ``within`` (the fleet's container network) only, when given."""

    def __init__(
        self,
        cache: RouteCache,
        interval: float,
        within: ipaddress.IPv4Network | None = None,
        kernel: KernelRoutes | None = None,
    ):
        self.cache = cache
        self.interval = interval
        self.within = within
        self.kernel = kernel or KernelRoutes()
        self._changed = cache.subscribe()
        self._reported: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.apply)
            except (NetlinkError, OSError) as exc:
                log.warning("cannot update the routes to the nodes' pools: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval)
            self._changed.clear()

    def apply(self) -> RoutePlan:
        table = self.cache.table
        pools = {ip: pool for ip, pool in table.pools.items() if self._ours(pool)}
        existing = {pool: gw for pool, gw in self.kernel.existing().items() if self._ours(pool)}
        plan = plan_routes(table.nodes, pools, self.kernel.local_addresses(), existing)
        for pool, gateway in plan.add.items():
            self.kernel.replace(pool, gateway)
            log.info("route to container pool %s via node %s", pool, gateway)
        for pool in plan.remove:
            self.kernel.remove(pool)
            log.info("route to container pool %s removed", pool)
        for conflict in set(plan.conflicts) - self._reported:
            log.error("not routed: %s", conflict)
        self._reported = set(plan.conflicts)
        return plan

    def _ours(self, pool: str) -> bool:
        if self.within is None:
            return True
        try:
            return ipaddress.IPv4Network(pool).subnet_of(self.within)
        except ValueError:
            return False
