"""The cluster-wide Bismuth daemons: the control-plane API and the frontend.

``bismuth-api`` runs on the hosts of the ``api`` group, ``bismuthfe`` on those of
``frontends``. Each gets a TOML config rendered from group data in ``<etc_dir>`` and a
program under the service manager, run from the daemon's version link
(:func:`tasks.toolkit.daemon_bin`); a changed config or a moved link restarts it (the API's
also when the cluster key it reads, ``tasks/cluster_key.py``, changed; the frontend's when
its frontend key did). The agent, which
needs containerd, has its own task (``tasks/agent.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from tasks.cluster_key import cluster_key_file, frontend_key_file
from tasks.rendering import template_file
from tasks.roles import API, FRONTENDS, has_role
from tasks.services import Program, program
from tasks.toolkit import daemon_bin, switch_daemon
from tasks.zookeeper import connect_string

API_PROGRAM = "bismuth-api"
FE_PROGRAM = "bismuth-fe"


def _daemon(name: str, description: str, command: str, config: str) -> Program:
    return Program(
        name=name,
        description=description,
        command=(daemon_bin(name, command), "--config", config),
        directory=host.data.var_dir,
        priority=300,  # after ZooKeeper, stopped before it
    )


def _changes(*ops: OperationMeta | None) -> list[OperationMeta]:
    return [op for op in ops if op is not None]


@deploy("Bismuth API")
def api(restart_on: Sequence[OperationMeta | None] = ()) -> None:
    """``bismuth-api``: function CRUD and scheduling, on ``api_bind``.

    ``restart_on``: other files it reads (the cluster key); a change restarts it (``None``:
    no such file here).
    """
    if not has_role(API):
        return
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
        repo_http_hosts=host.data.repo_http_hosts,
    )
    link = switch_daemon(API_PROGRAM)
    spec = _daemon(API_PROGRAM, "Bismuth control-plane API", "bismuth-api", path)
    program(spec, _changes(config, link, *restart_on))


@deploy("Bismuth frontend")
def frontend(restart_on: Sequence[OperationMeta | None] = ()) -> None:
    """``bismuthfe``: routes requests by Host header on ``fe_bind``; health on ``fe_admin_bind``.

    ``restart_on``: other files it reads (its key); a change restarts it.
    """
    if not has_role(FRONTENDS):
        return
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
        frontend_key_file=frontend_key_file(),
    )
    link = switch_daemon(FE_PROGRAM)
    spec = _daemon(FE_PROGRAM, "Bismuth frontend", "bismuthfe", path)
    program(spec, _changes(config, link, *restart_on))
