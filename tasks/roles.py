"""Which parts of the cluster a host runs: its inventory groups.

``zookeeper`` (ensemble members), ``agents`` (containerd, the agent: nodes that run
containers), ``frontends`` (``bismuthfe``) and ``api`` (``bismuth-api``). An inventory that
has none of these groups (``inventories/local.py``, ``@local``) makes every host a
single-node cluster that runs everything.
"""

from __future__ import annotations

from pyinfra import host, inventory

ZOOKEEPER = "zookeeper"
AGENTS = "agents"
FRONTENDS = "frontends"
API = "api"
ROLES = (ZOOKEEPER, AGENTS, FRONTENDS, API)


def single_node() -> bool:
    """Whether the inventory names no role group, so every host runs everything."""
    return not any(inventory.get_group(role, default=[]) for role in ROLES)


def has_role(role: str) -> bool:
    """Whether this host runs ``role`` (every role without role groups)."""
    return single_node() or role in host.groups


def members(role: str) -> list[str]:
    """Names of the hosts in ``role``'s group, in inventory order ([this host] without groups)."""
    if single_node():
        return [host.name]
    return [member.name for member in inventory.get_group(role, default=[])]


def first_of(role: str) -> bool:
    """Whether this host is the first of ``role``'s group: where one-off steps run."""
    found = members(role)
    return bool(found) and found[0] == host.name
