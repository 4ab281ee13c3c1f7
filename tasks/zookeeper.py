"""ZooKeeper from Debian's package, run by the service manager with a config of our own.

The ensemble is the inventory group ``zookeeper``; each member's ``myid`` is its position
in that group. Without the group (a single host, ``@local``), every host runs a standalone
ZooKeeper of its own. ``zoo.cfg`` lists every member, so 3- and 5-node ensembles need only
the group.

Observers: the hosts of the group ``zookeeper_observers`` (not also in ``zookeeper``) run a
ZooKeeper that follows the ensemble without voting (``peerType=observer``; their ``myid``
continues after the members'). They serve reads and watches, and forward writes to the
leader, so they add read capacity without slowing writes or elections. The frontends, which
only read and watch, connect to the observers when there are any; every other daemon and
``bismuthctl`` to the voting members. Observers need the ``zookeeper`` group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import files

from tasks.rendering import template_file
from tasks.services import Program, program

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


OBSERVERS = "zookeeper_observers"  # inventory group


@dataclass(frozen=True)
class Member:
    id: int  # myid
    address: str
    observer: bool = False  # follows the ensemble without voting


def servers(voters: Sequence[str], observers: Sequence[str] = ()) -> list[Member]:
    """The ensemble's servers in myid order: the voting members, then the observers (an
    address among the voters is not an observer too)."""
    members = [Member(n, address) for n, address in enumerate(voters, start=1)]
    watching = [a for a in dict.fromkeys(observers) if a not in voters]
    return members + [
        Member(len(members) + n, address, observer=True)
        for n, address in enumerate(watching, start=1)
    ]


def ensemble() -> list[Member]:
    """Servers of the ensemble this host belongs to (observers included), in myid order."""
    group = inventory.get_group("zookeeper", default=[])
    if not group:
        return servers([host.data.node_ip])  # standalone: no observers
    observers = inventory.get_group(OBSERVERS, default=[])
    return servers(
        [member.data.node_ip for member in group], [member.data.node_ip for member in observers]
    )


def connect_string(*, reads: bool = False) -> str:
    """``HOST:PORT,...`` for the daemons and ``bismuthctl``: the voting members; with
    ``reads`` (a daemon that only reads and watches), the observers if there are any."""
    port = host.data.zookeeper_port
    return ",".join(f"{member.address}:{port}" for member in serving(ensemble(), reads=reads))


def serving(every: Sequence[Member], *, reads: bool) -> list[Member]:
    """The servers a daemon connects to (see :func:`connect_string`)."""
    chosen = [m for m in every if m.observer] if reads else []
    return chosen or [m for m in every if not m.observer]


def is_member() -> bool:
    """Whether this host runs a ZooKeeper server (a voting member or an observer)."""
    return any(member.address == host.data.node_ip for member in ensemble())


def me() -> Member:
    return next(m for m in ensemble() if m.address == host.data.node_ip)


def zoo_cfg_variables(
    me: Member,
    servers: Sequence[Member],
    *,
    tick_ms: int,
    data_dir: str,
    data_log_dir: str,
    client_port: int,
    peer_port: int,
    election_port: int,
) -> dict[str, Any]:
    """What ``templates/zoo.cfg.j2`` is rendered with for the server ``me``."""
    return {
        "tick_ms": tick_ms,
        "data_dir": data_dir,
        "data_log_dir": data_log_dir,
        "client_port": client_port,
        "client_address": me.address,
        "servers": list(servers),
        "observer": me.observer,
        "peer_port": peer_port,
        "election_port": election_port,
    }


@deploy("ZooKeeper")
def zookeeper() -> None:
    """Configuration, data directories and the ZooKeeper daemon, on ensemble members and
    observers."""
    if not is_member():
        return
    mine = me()
    conf_dir = f"{host.data.etc_dir}/zookeeper"
    data_dir = f"{host.data.var_dir}/zookeeper"
    data_log_dir = f"{data_dir}/txlog"
    for what, path in (
        ("configuration", conf_dir),
        ("snapshots", data_dir),
        ("transaction logs", data_log_dir),
    ):
        files.directory(name=f"ZooKeeper {what} directory", path=path, mode="750")
    configs = [
        template_file(
            "ZooKeeper zoo.cfg",
            "zoo.cfg.j2",
            f"{conf_dir}/zoo.cfg",
            "644",
            **zoo_cfg_variables(
                mine,
                ensemble(),
                tick_ms=host.data.zookeeper_tick_ms,
                data_dir=data_dir,
                data_log_dir=data_log_dir,
                client_port=host.data.zookeeper_port,
                peer_port=host.data.zookeeper_peer_port,
                election_port=host.data.zookeeper_election_port,
            ),
        ),
        template_file(
            "ZooKeeper logging",
            "log4j.properties.j2",
            f"{conf_dir}/log4j.properties",
            "644",
            level=host.data.zookeeper_log_level,
        ),
        template_file("ZooKeeper myid", "myid.j2", f"{data_dir}/myid", "644", myid=mine.id),
    ]
    program(zookeeper_program(conf_dir, data_dir), configs)


def zookeeper_program(conf_dir: str, work_dir: str) -> Program:
    classpath = f"{host.data.zookeeper_classpath}:{conf_dir}"
    return Program(
        name="bismuth-zookeeper",
        description="ZooKeeper for the Bismuth toolkit",
        command=(
            host.data.zookeeper_java,
            f"-Xmx{host.data.zookeeper_heap}",
            f"-Dlog4j.configuration=file:{conf_dir}/log4j.properties",
            "-Dzookeeper.jmx.log4j.disable=true",
            *host.data.zookeeper_java_opts,
            "-cp",
            classpath,
            MAIN_CLASS,
            f"{conf_dir}/zoo.cfg",
        ),
        directory=work_dir,
        stop_seconds=20,
        priority=100,  # first up, last down: every daemon uses it
    )
