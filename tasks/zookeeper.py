"""ZooKeeper from Debian's package, run by the service manager with a config of our own.

The ensemble is the inventory group ``zookeeper``; each member's ``myid`` is its position
in that group. Without the group (a single host, ``@local``), every host runs a standalone
ZooKeeper of its own. ``zoo.cfg`` lists every member, so 3- and 5-node ensembles need only
the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import files

from tasks.rendering import template_file
from tasks.services import Program, program

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


@dataclass(frozen=True)
class Member:
    id: int  # myid
    address: str


def ensemble() -> list[Member]:
    """Members of the ensemble this host belongs to, in myid order."""
    group = inventory.get_group("zookeeper", default=[])
    addresses = [member.data.node_ip for member in group] or [host.data.node_ip]
    return [Member(n, address) for n, address in enumerate(addresses, start=1)]


def connect_string() -> str:
    """``HOST:PORT,...`` for the daemons and ``bismuthctl``."""
    port = host.data.zookeeper_port
    return ",".join(f"{member.address}:{port}" for member in ensemble())


def is_member() -> bool:
    return any(member.address == host.data.node_ip for member in ensemble())


def my_id() -> int:
    return next(m.id for m in ensemble() if m.address == host.data.node_ip)


@deploy("ZooKeeper")
def zookeeper() -> None:
    """Configuration, data directories and the ZooKeeper daemon, on ensemble members."""
    if not is_member():
        return
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
            tick_ms=host.data.zookeeper_tick_ms,
            data_dir=data_dir,
            data_log_dir=data_log_dir,
            client_port=host.data.zookeeper_port,
            client_address=host.data.node_ip,
            servers=ensemble(),
            peer_port=host.data.zookeeper_peer_port,
            election_port=host.data.zookeeper_election_port,
        ),
        template_file(
            "ZooKeeper logging",
            "log4j.properties.j2",
            f"{conf_dir}/log4j.properties",
            "644",
            level=host.data.zookeeper_log_level,
        ),
        template_file("ZooKeeper myid", "myid.j2", f"{data_dir}/myid", "644", myid=my_id()),
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
