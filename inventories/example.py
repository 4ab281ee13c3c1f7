"""An SSH fleet, as a model for your own: copy this file, put your hosts in, deploy.

From the repository root (where pyinfra finds ``group_data/``), as a user that can ssh to
every host as root::

    .venv/bin/pyinfra inventories/myfleet.py deploy.py       # bring up, or change, the fleet
    .venv/bin/pyinfra inventories/myfleet.py upgrade.py \\
        --data toolkit_version_label=rc2                     # roll the agents to a new build

Groups (a host may be in several: list it in each with the same data):

``zookeeper``
    The ZooKeeper ensemble: 3 hosts (survives the loss of one) or 5 (of two); 1 works, with
    no redundancy. Each member's ``myid`` is its position here, so keep the order stable.
``zookeeper_observers`` (optional)
    ZooKeeper observers: they follow the ensemble without voting, and the frontends read and
    watch through them only. For fleets whose frontends load the ensemble (``docs/scale.md``);
    the frontends' own hosts are a good place for them.
``agents``
    The nodes that run containers: containerd, the agent and the base image. Each is
    provisioned as a node under its ``node_ip``. Add a host here and deploy to grow the fleet.
``frontends``
    nginx on ``fe_bind`` (``0.0.0.0:8000``, ``group_data/frontends.py``) and ``bismuthfe``,
    which keeps its routes: put your load balancer or DNS in front of these. Only they
    reach containers' serving ports; each routes to every node's container pool.
``api``
    ``bismuth-api`` on ``api_bind`` (``127.0.0.1:8002``: it has no authentication of its
    own; reach it through ssh, or put an authenticating proxy in front). The sample
    function is created through the first one.

Host data: ``ssh_hostname`` (how this machine reaches the host), ``node_ip`` (the address
the other hosts reach it at: ZooKeeper binds it, agents serve on it, it names the node in
ZooKeeper; required, and stable for the life of the node), optionally ``network_pool`` (the
node's container pool; by default derived from ``node_ip``, see ``tasks/pools.py``) and
pyinfra's ``ssh_*`` settings.
Any setting of ``group_data/all.py`` can be given per host here, or per group in
``group_data/<group>.py``.

Hosts: Debian 12 (the Python and architecture of the machine running pyinfra, which builds
the wheels they install), reachable over ssh as root, and able to reach each other on the
ZooKeeper (2181, 2888, 3888) and agent (8001) ports; they need no package index for the
toolkit (it arrives as a wheelhouse), only Debian's mirrors for the Debian packages.
"""

from __future__ import annotations

from typing import Any

SSH: dict[str, Any] = {
    "ssh_user": "root",
    "ssh_key": "~/.ssh/bismuth_fleet_ed25519",
    "ssh_known_hosts_file": "~/.ssh/known_hosts",
}


def fleet_host(name: str, address: str, **data: Any) -> tuple[str, dict[str, Any]]:
    """A host reached at ``address`` over ssh, known to the cluster by that address."""
    return (name, {"ssh_hostname": address, "node_ip": address, **SSH, **data})


zookeeper = [
    fleet_host("zk1.example.net", "10.20.0.11"),
    fleet_host("zk2.example.net", "10.20.0.12"),
    fleet_host("zk3.example.net", "10.20.0.13"),
]
agents = [fleet_host(f"node{n}.example.net", f"10.20.1.{10 + n}") for n in range(1, 7)]
frontends = [
    fleet_host("edge1.example.net", "10.20.2.11"),
    fleet_host("edge2.example.net", "10.20.2.12"),
]
api = [fleet_host("control1.example.net", "10.20.3.11")]
# zookeeper_observers = frontends  # a ZooKeeper observer on each frontend host (optional)
