"""The cluster-wide Bismuth daemons: the control-plane API and the frontend.

Each gets a TOML config rendered from group data in ``<etc_dir>`` and a program under the
service manager; a changed config restarts its daemon (the API's also when the cluster key
it reads, ``tasks/cluster_key.py``, changed). The commands come from the
toolkit's virtualenv (``bismuth_venv``). The agent, which needs containerd, has its own
task (``tasks/agent.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from tasks.cluster import venv_bin
from tasks.cluster_key import cluster_key_file
from tasks.rendering import template_file
from tasks.services import Program, program
from tasks.zookeeper import connect_string


def _daemon(name: str, description: str, command: str, config: str) -> Program:
    return Program(
        name=name,
        description=description,
        command=(venv_bin(command), "--config", config),
        directory=host.data.var_dir,
        priority=300,  # after ZooKeeper, stopped before it
    )


@deploy("Bismuth API")
def api(restart_on: Sequence[OperationMeta] = ()) -> None:
    """``bismuth-api``: function CRUD and scheduling, on ``api_bind``.

    ``restart_on``: other files it reads (the cluster key); a change restarts it.
    """
    path = f"{host.data.etc_dir}/api.toml"
    config = template_file(
        "bismuth-api configuration",
        "api.toml.j2",
        path,
        "640",
        zookeeper=connect_string(),
        zookeeper_env=host.data.zookeeper_env,
        bind=host.data.api_bind,
        agent_port=host.data.agent_port,
        node_loss_grace=host.data.node_loss_grace,
        log_level=host.data.log_level,
        cluster_key_file=cluster_key_file(),
    )
    spec = _daemon("bismuth-api", "Bismuth control-plane API", "bismuth-api", path)
    program(spec, [config, *restart_on])


@deploy("Bismuth frontend")
def frontend() -> None:
    """``bismuthfe``: routes requests by Host header on ``fe_bind``; health on ``fe_admin_bind``."""
    path = f"{host.data.etc_dir}/fe.toml"
    config = template_file(
        "bismuthfe configuration",
        "fe.toml.j2",
        path,
        "640",
        zookeeper=connect_string(),
        zookeeper_env=host.data.zookeeper_env,
        bind=host.data.fe_bind,
        admin_bind=host.data.fe_admin_bind,
        agent_port=host.data.agent_port,
        log_level=host.data.log_level,
    )
    program(_daemon("bismuth-fe", "Bismuth frontend", "bismuthfe", path), [config])
