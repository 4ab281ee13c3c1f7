"""Make this host part of the cluster: bootstrap the environment once, provision the node.

Both steps run ``bismuthctl`` and only when ZooKeeper says they are needed. The check runs
when the step is about to execute (``_if``), not when the deploy is prepared: on a first run
ZooKeeper has only just been started by then, and a rerun finds both done and changes nothing.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.facts import ClusterMembership, ClusterState
from tasks.zookeeper import connect_string


def venv_bin(program: str) -> str:
    return f"{host.data.bismuth_venv}/bin/{program}"


def bismuthctl(*args: str) -> str:
    """A ``bismuthctl`` command line aimed at this deploy's ensemble and environment."""
    return shlex.join(
        [
            venv_bin("bismuthctl"),
            "--zookeeper",
            connect_string(),
            "--zookeeper-env",
            host.data.zookeeper_env,
            *args,
        ]
    )


def cluster_state() -> ClusterState:
    """Ask ZooKeeper now, waiting for it to answer as long as bootstrap would."""
    return host.get_fact(
        ClusterMembership,
        python=venv_bin("python"),
        zookeeper=connect_string(),
        env=host.data.zookeeper_env,
        ip=host.data.node_ip,
        wait=float(host.data.bootstrap_wait),
    )


@deploy("Cluster membership")
def cluster() -> None:
    """Bootstrap the environment if it is not, then provision this node if it is not."""
    server.shell(
        name=f"Bootstrap environment {host.data.zookeeper_env}",
        commands=[bismuthctl("bootstrap", "--wait", str(host.data.bootstrap_wait))],
        _if=lambda: not cluster_state().bootstrapped,
    )
    server.shell(
        name=f"Provision node {host.data.node_ip}",
        commands=[bismuthctl("provision", host.data.node_ip)],
        _if=lambda: not cluster_state().provisioned,
    )
