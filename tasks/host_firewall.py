"""The host firewall: the daemons' ports accept only the fleet's own hosts and loopback.

On every host the deploy loads an nftables table of its own (``host_firewall_table``,
default ``bismuth_host_<zookeeper_env>``) from ``<etc_dir>/host-firewall.nft``: for the
ports of ZooKeeper (client, peer, election), the agent, the API and the frontend's admin
address, a connection is accepted from loopback and from the fleet (every inventory host's
``node_ip``, plus ``host_firewall_allow``) and dropped from anywhere else, IPv6 included.
Nothing else is matched: the frontend's public port and every other port keep whatever the
host's own rules say. The table carries a digest of what it admits; the file is loaded only
when the live table's differs (missing after a reboot, or the fleet changed), so a second
deploy changes nothing. ``host_firewall = False`` removes the table.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from io import StringIO

from jinja2 import Template
from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import files, server

from bismuth_core.config import split_hostport
from tasks.facts import NftTableComment
from tasks.rendering import JINJA, TEMPLATES

COMMENT = "bismuth host firewall "


def table_name() -> str:
    return str(host.data.host_firewall_table or f"bismuth_host_{host.data.zookeeper_env}")


def fleet_addresses() -> list[str]:
    """Every inventory host's ``node_ip`` (whatever ``--limit`` says), and the extra ones."""
    found = {str(member.data.node_ip) for member in inventory}
    return sorted(found | {str(a) for a in host.data.host_firewall_allow})


def daemon_ports() -> list[int]:
    """ZooKeeper's, the agent's, the API's and the frontend admin's; never the public one."""
    ports = {
        int(host.data.zookeeper_port),
        int(host.data.zookeeper_peer_port),
        int(host.data.zookeeper_election_port),
        int(host.data.agent_port),
        split_hostport(str(host.data.api_bind), 8002)[1],
        split_hostport(str(host.data.fe_admin_bind), 8003)[1],
    }
    ports.discard(split_hostport(str(host.data.fe_bind), 8000)[1])
    return sorted(ports)


def ruleset(table: str, fleet: list[str], ports: list[int]) -> tuple[str, str]:
    """The file's text and the digest it carries (of what it admits)."""
    digest = hashlib.sha256(json.dumps([table, fleet, ports]).encode()).hexdigest()[:16]
    template = Template((TEMPLATES / "host-firewall.nft.j2").read_text(), **JINJA)
    text = template.render(table=table, fleet=fleet, ports=ports, comment=COMMENT + digest)
    return text + "\n", COMMENT + digest


@deploy("Host firewall")
def host_firewall() -> None:
    """Load the table when the live one differs; remove it when turned off."""
    table = table_name()
    if not host.data.host_firewall:
        server.shell(
            name=f"Remove the host firewall (table inet {table})",
            commands=[f"nft delete table inet {shlex.quote(table)}"],
            _if=lambda: host.get_fact(NftTableComment, table=table) is not None,
        )
        return
    text, comment = ruleset(table, fleet_addresses(), daemon_ports())
    path = f"{host.data.etc_dir}/host-firewall.nft"
    files.put(name="Host firewall rules", src=StringIO(text), dest=path, mode="600")
    server.shell(
        name=f"Load the host firewall (table inet {table})",
        commands=[f"nft -f {shlex.quote(path)}"],
        _if=lambda: host.get_fact(NftTableComment, table=table) != comment,
    )
