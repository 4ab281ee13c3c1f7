"""Make the hosts a cluster: bootstrap the environment once, provision every agent host.

Both steps run ``bismuthctl`` and only when ZooKeeper says they are needed. The check runs
when the step is about to execute (``_if``), not when the deploy is prepared: on a first run
ZooKeeper has only just been started by then, and a rerun finds both done and changes nothing.
The bootstrap runs on one host only (the first of ``api`` or ``agents`` that gets here: they
hold the cluster key, as ``bismuthctl`` must to act as the cluster), so hosts never race to
create the same tree; it also gives a tree made before ACLs the cluster's. Each host of
``agents`` then provisions itself as a node.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.cluster_key import cluster_key_file
from tasks.facts import ClusterMembership, ClusterState
from tasks.roles import AGENTS, API, has_role
from tasks.toolkit import tool_bin
from tasks.zookeeper import connect_string


def bismuthctl(*args: str) -> str:
    """A ``bismuthctl`` command line aimed at this deploy's ensemble and environment, acting
    as the cluster (with the host's cluster key: only hosts of ``api`` and ``agents`` run
    it)."""
    return shlex.join(
        [
            tool_bin("bismuthctl"),
            "--zookeeper",
            connect_string(),
            "--zookeeper-env",
            host.data.zookeeper_env,
            "--cluster-key-file",
            cluster_key_file(),
            *args,
        ]
    )


def cluster_state() -> ClusterState:
    """Ask ZooKeeper now, waiting for it to answer as long as bootstrap would."""
    return host.get_fact(
        ClusterMembership,
        python=tool_bin("python"),
        zookeeper=connect_string(),
        env=host.data.zookeeper_env,
        ip=host.data.node_ip,
        wait=float(host.data.bootstrap_wait),
        key_file=cluster_key_file(),
    )


@deploy("Cluster membership")
def cluster() -> None:
    """Bootstrap the environment if it is not (or its tree lacks the cluster's ACLs), then
    provision this node if it is not. Only hosts holding the cluster key take part."""
    if not (has_role(API) or has_role(AGENTS)):
        return
    server.shell(
        name=f"Bootstrap environment {host.data.zookeeper_env}",
        commands=[bismuthctl("bootstrap", "--wait", str(host.data.bootstrap_wait))],
        _if=lambda: not (state := cluster_state()).bootstrapped or not state.secured,
        _run_once=True,
    )
    if not has_role(AGENTS):
        return
    server.shell(
        name="Provision this host as a node",
        commands=[bismuthctl("provision", host.data.node_ip)],
        _if=lambda: not cluster_state().provisioned,
    )
