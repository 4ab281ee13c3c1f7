"""Container networking of the agent: a veth and a /30 per container, and the firewall.

How the agent uses it (setup in this order, teardown in reverse; every step idempotent):

1. at start: ``Firewall.install(await adapter.host_view())`` creates or refreshes the
   table ``inet bismuth_<firewall_id>`` (keeping container elements) and turns IPv4
   forwarding on if it was off; ``NetworkAdapter.list()`` finds veths to adopt or reap;
2. per container: ``allocation = await adapter.setup(cid, netns)`` (the file of the
   network namespace the agent made for the container, or ``/proc/<pid>/ns/net``), then
   ``await firewall.attach(allocation)``; the provider listens on
   ``allocation.provider_address:<provider_port>``, which the container also reaches as
   ``<metadata_address>:<provider_port>``;
3. after an agent restart: ``await adapter.adopt(cid, netns)`` then ``firewall.attach``;
4. removal: ``await firewall.detach(allocation.ifname)``, ``await adapter.teardown(cid)``.

Only :mod:`.links` imports pyroute2; :mod:`.firewall` drives ``nft``; :mod:`.addressing` and
:mod:`.ruleset` are pure and unit-tested.
"""

from .addressing import SubnetPool
from .allocations import AllocationStore
from .firewall import Firewall
from .links import NetworkAdapter
from .model import (
    Allocation,
    ContainerFirewall,
    ContainerNetwork,
    HostInterface,
    HostView,
    NetworkError,
    NetworkStateError,
    SysctlChange,
    host_ifname,
)
from .settings import NetworkSettings

__all__ = [
    "Allocation",
    "AllocationStore",
    "ContainerFirewall",
    "ContainerNetwork",
    "Firewall",
    "HostInterface",
    "HostView",
    "NetworkAdapter",
    "NetworkError",
    "NetworkSettings",
    "NetworkStateError",
    "SubnetPool",
    "SysctlChange",
    "host_ifname",
]
