"""The netlink adapter: a veth pair per container, addresses, routes and rate limits.

This is the only module that imports pyroute2. Each container gets ``bth<id>`` on the host
(``.1/30``, in the settings' interface group, its alias = the container id) and ``eth0`` in
its network namespace (``.2/30``, default route via ``.1``, ``lo`` up). Rate limits are token
bucket filters on the sending side of each direction: the host end for traffic into the
container, the container's ``eth0`` for traffic out of it (the container process has no
CAP_NET_ADMIN to remove it).

Every step is idempotent and "not found" is success when removing, so a setup interrupted by
a crash is finished by running it again, and a teardown is safe even if setup never ran.
Netlink calls block, so the async methods run them on worker threads; work inside another
network namespace runs through :func:`.namespaces.run_in_netns`.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import logging
import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Interface
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bismuth_core.errors import Conflict, NotFound

from .allocations import AllocationStore
from .model import (
    CONTAINER_IFNAME,
    HOST_IFNAME_PREFIX,
    Allocation,
    HostInterface,
    HostView,
    NetworkError,
    host_ifname,
)
from .namespaces import open_netns, run_in_netns
from .settings import SUBNET_PREFIX, NetworkSettings
from .sysctl import ensure_sysctls, forwarding_key

log = logging.getLogger(__name__)

T = TypeVar("T")
Link = Any  # a pyroute2 ifinfmsg
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
TC_H_ROOT = 0xFFFFFFFF
TBF_HANDLE = 0x10000
TBF_LATENCY = "50ms"


class NetworkAdapter:
    """Implements :class:`.model.ContainerNetwork` with pyroute2."""

    def __init__(self, settings: NetworkSettings, allocations: AllocationStore | None = None):
        self.settings = settings
        self.allocations = allocations or AllocationStore(
            settings.state_file, settings.pool_network
        )

    async def reserve(self, container_id: str) -> Allocation:
        """The container's subnet (reserved now if it has none): known before its veth."""
        return await asyncio.to_thread(self.allocations.reserve, container_id)

    async def release_others(self, known: set[str]) -> None:
        """Release subnets reserved for containers not in ``known`` (an agent that stopped
        between a reservation and the veth); a container with a veth is reaped instead."""
        for allocation in self.allocations.allocations():
            if allocation.container_id not in known:
                await self.teardown(allocation.container_id)

    async def setup(self, container_id: str, netns_path: str) -> Allocation:
        """Wire the namespace at ``netns_path`` (``/proc/<pid>/ns/net`` or a netns file)."""
        return await asyncio.to_thread(self._setup, container_id, netns_path)

    async def adopt(self, container_id: str, netns_path: str | None = None) -> Allocation:
        """Check the veth left by an earlier agent and take it over, recreating nothing.

        Missing pieces that do not disturb traffic (alias, address, link state, rate limit)
        are put back. Raises :class:`NotFound` if the veth is gone or, given ``netns_path``,
        its peer is not that namespace's ``eth0``: the caller then sets up afresh.
        """
        return await asyncio.to_thread(self._adopt, container_id, netns_path)

    async def teardown(self, container_id: str) -> None:
        """Delete the veth (both ends, their qdiscs) and release the subnet; idempotent."""
        await asyncio.to_thread(self._teardown, container_id)

    async def list(self) -> builtins.list[HostInterface]:
        """Bismuth veth ends on the host (this agent's interface group), for reaping."""
        return await asyncio.to_thread(self._host, self._describe_all)

    async def host_view(self) -> HostView:
        """The host's own networks and the interfaces holding them (see :class:`HostView`)."""
        return await asyncio.to_thread(self._host, _host_view)

    # -- blocking parts, on worker threads -------------------------------------------------

    def _setup(self, container_id: str, netns_path: str) -> Allocation:
        netns_fd = open_netns(netns_path)  # one namespace throughout, even if the path changes
        try:
            allocation = self.allocations.reserve(container_id)
            try:
                self._wire(allocation, netns_fd)
            except BaseException:
                self._undo_setup(container_id)
                raise
        finally:
            os.close(netns_fd)
        log.info(
            "network set up: %s %s <-> eth0 %s",
            allocation.ifname,
            allocation.host_interface,
            allocation.container_interface,
            extra={"container_id": container_id},
        )
        return allocation

    def _wire(self, allocation: Allocation, netns_fd: int) -> None:
        ifname, netns_path = allocation.ifname, f"/proc/self/fd/{netns_fd}"
        index = self._host(lambda ipr: _index(ipr, ifname))
        if index is not None and self._peer_index(netns_path) != index:
            log.info("replacing veth %s whose peer is elsewhere", ifname)
            self._host(lambda ipr: _delete(ipr, ifname))
            index = None
        if index is None:
            self._host(lambda ipr: self._create_veth(ipr, ifname, netns_fd))
        self._host(lambda ipr: self._configure_host_end(ipr, allocation))
        self._inside(netns_path, lambda ipr: self._configure_container_end(ipr, allocation))

    def _undo_setup(self, container_id: str) -> None:
        """Leave nothing behind after a failed setup; keep the original error."""
        try:
            self._teardown(container_id)
        except Exception:
            log.exception("cleanup after failed setup", extra={"container_id": container_id})

    def _adopt(self, container_id: str, netns_path: str | None) -> Allocation:
        ifname = host_ifname(container_id)
        found = self._host(lambda ipr: self._describe(ipr, ifname))
        if found is None:
            raise NotFound(f"container {container_id} has no veth {ifname}")
        allocation = self.allocations.lookup(container_id) or self._reclaim(container_id, found)
        if netns_path is not None and self._peer_index(netns_path) != found.index:
            raise NotFound(f"eth0 in {netns_path} is not the peer of {ifname}")
        self._host(lambda ipr: self._configure_host_end(ipr, allocation))
        if netns_path is not None:
            self._inside(netns_path, lambda ipr: self._configure_container_end(ipr, allocation))
        log.info("network adopted: %s", ifname, extra={"container_id": container_id})
        return allocation

    def _teardown(self, container_id: str) -> None:
        ifname = host_ifname(container_id)
        deleted = self._host(lambda ipr: _delete(ipr, ifname))
        released = self.allocations.release(container_id)
        if deleted or released:
            log.info("network removed: %s", ifname, extra={"container_id": container_id})

    def _reclaim(self, container_id: str, found: HostInterface) -> Allocation:
        """Rebuild a lost allocation from the ``.1/30`` on the host end."""
        for address in found.addresses:
            subnet = address.network
            if subnet.prefixlen == SUBNET_PREFIX and address.ip == subnet[1]:
                return self.allocations.claim(container_id, subnet)
        raise NotFound(f"container {container_id}: {found.ifname} has no /30 host address")

    def _peer_index(self, netns_path: str) -> int | None:
        """Host-side ifindex of the veth whose peer is ``eth0`` in that namespace."""
        return self._inside(netns_path, _eth0_peer_index)

    def _create_veth(self, ipr: IPRoute, ifname: str, netns_fd: int) -> None:
        peer = {"ifname": CONTAINER_IFNAME, "net_ns_fd": netns_fd}
        try:
            ipr.link(
                "add", ifname=ifname, kind="veth", group=self.settings.interface_group, peer=peer
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise Conflict(f"the namespace already has an {CONTAINER_IFNAME}") from exc
            raise

    def _configure_host_end(self, ipr: IPRoute, allocation: Allocation) -> None:
        index = _require_index(ipr, allocation.ifname)
        ipr.link(
            "set",
            index=index,
            ifalias=allocation.container_id,
            group=self.settings.interface_group,
        )
        _set_only_address(ipr, index, allocation.host_interface)
        ensure_sysctls({forwarding_key(allocation.ifname): "1"})  # what the container sends
        ipr.link("set", index=index, state="up")
        self._shape(ipr, index, self.settings.download_rate)

    def _configure_container_end(self, ipr: IPRoute, allocation: Allocation) -> None:
        ipr.link("set", index=_require_index(ipr, "lo"), state="up")
        index = _require_index(ipr, CONTAINER_IFNAME)
        _set_only_address(ipr, index, allocation.container_interface)
        ipr.link("set", index=index, state="up")
        gateway = str(allocation.host_address)
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)
        self._shape(ipr, index, self.settings.upload_rate)

    def _shape(self, ipr: IPRoute, index: int, rate: int) -> None:
        """A root tbf of ``rate`` bits/s on ``index``; none when ``rate`` is 0."""
        if rate:
            burst = self.settings.burst_bytes(rate)
            options = {"rate": f"{rate}bit", "burst": burst, "latency": TBF_LATENCY}
            ipr.tc("replace", "tbf", index, TBF_HANDLE, **options)
        elif "tbf" in _root_qdiscs(ipr, index):
            ipr.tc("del", index=index, handle=TBF_HANDLE, parent=TC_H_ROOT)

    def _describe(self, ipr: IPRoute, ifname: str) -> HostInterface | None:
        index = _index(ipr, ifname)
        if index is None:
            return None
        link = ipr.get_links(index)[0]
        return self._host_interface(link, _addresses(ipr, index)) if self._ours(link) else None

    def _describe_all(self, ipr: IPRoute) -> builtins.list[HostInterface]:
        return [
            self._host_interface(link, _addresses(ipr, link["index"]))
            for link in ipr.get_links()
            if self._ours(link)
        ]

    def _ours(self, link: Link) -> bool:
        info = link.get_attr("IFLA_LINKINFO")
        return (
            link.get_attr("IFLA_GROUP") == self.settings.interface_group
            and str(link.get_attr("IFLA_IFNAME")).startswith(HOST_IFNAME_PREFIX)
            and info is not None
            and info.get_attr("IFLA_INFO_KIND") == "veth"
        )

    @staticmethod
    def _host_interface(link: Link, addresses: tuple[IPv4Interface, ...]) -> HostInterface:
        return HostInterface(
            ifname=link.get_attr("IFLA_IFNAME"),
            index=link["index"],
            container_id=link.get_attr("IFLA_IFALIAS") or None,
            addresses=addresses,
            up=bool(link["flags"] & IFF_UP),
        )

    def _host(self, work: Callable[[IPRoute], T]) -> T:
        return run_in_netns(self.settings.host_netns, lambda: _with_netlink(work))

    def _inside(self, netns_path: str, work: Callable[[IPRoute], T]) -> T:
        return run_in_netns(netns_path, lambda: _with_netlink(work))


def _with_netlink(work: Callable[[IPRoute], T]) -> T:
    try:
        with IPRoute() as ipr:
            return work(ipr)
    except NetlinkError as exc:
        raise NetworkError(f"netlink: {exc}") from exc


def _host_view(ipr: IPRoute) -> HostView:
    """Addresses and interfaces of the host itself: any agent's containers and lo aside."""
    names = {
        link["index"]: str(link.get_attr("IFLA_IFNAME"))
        for link in ipr.get_links()
        if not link["flags"] & IFF_LOOPBACK
    }
    own = {i: n for i, n in names.items() if not n.startswith(HOST_IFNAME_PREFIX)}
    networks, uplinks = set(), set()
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg["index"] in own:
            address = IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            networks.add(address.network)
            uplinks.add(own[msg["index"]])
    return HostView(tuple(sorted(networks)), tuple(sorted(uplinks)))


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _require_index(ipr: IPRoute, ifname: str) -> int:
    index = _index(ipr, ifname)
    if index is None:
        raise NotFound(f"interface {ifname} is missing")
    return index


def _delete(ipr: IPRoute, ifname: str) -> bool:
    """Delete a link by name; False if it was not there."""
    index = _index(ipr, ifname)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise
    return True


def _eth0_peer_index(ipr: IPRoute) -> int | None:
    index = _index(ipr, CONTAINER_IFNAME)
    if index is None:
        return None
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
        return None
    peer = link.get_attr("IFLA_LINK")
    return int(peer) if peer is not None else None


def _addresses(ipr: IPRoute, index: int) -> tuple[IPv4Interface, ...]:
    return tuple(
        IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(index=index, family=socket.AF_INET)
    )


def _set_only_address(ipr: IPRoute, index: int, wanted: IPv4Interface) -> None:
    """Make ``wanted`` the link's only IPv4 address."""
    for address in _addresses(ipr, index):
        if address != wanted:
            ipr.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
    ipr.addr("replace", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen)


def _root_qdiscs(ipr: IPRoute, index: int) -> set[str]:
    return {q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=index) if q["parent"] == TC_H_ROOT}
