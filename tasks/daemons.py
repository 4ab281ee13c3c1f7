"""The cluster-wide Bismuth daemons: the control-plane API and the frontend.

``bismuth-api`` runs on the hosts of the ``api`` group; the frontend, nginx
(``bismuth-fe-nginx``) and its controller ``bismuthfe`` (``bismuth-fe``), on those of
``frontends``. Each gets a TOML config rendered from group data in ``<etc_dir>`` and a
program under the service manager, run from the daemon's version link
(:func:`tasks.toolkit.daemon_bin`); a changed config or a moved link restarts it (the API's
also when the cluster key it reads, ``tasks/cluster_key.py``, changed; the frontend's when
its frontend key did), except nginx, which takes them in place (``bismuthfe-nginx
--reload``). Where systemd is PID 1, Debian's own
``nginx.service`` (its default site on port 80) is stopped and disabled. The agent, which
needs containerd, has its own task (``tasks/agent.py``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from tasks.cluster_key import cluster_key_file, frontend_key_file
from tasks.rendering import template_file
from tasks.roles import API, FRONTENDS, has_role, single_node
from tasks.services import Program, program, stop_debian_service
from tasks.toolkit import daemon_bin, switch_daemon
from tasks.zookeeper import connect_string

API_PROGRAM = "bismuth-api"
FE_PROGRAM = "bismuth-fe"
FE_NGINX_PROGRAM = "bismuth-fe-nginx"  # runs from bismuth-fe's version link too


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
        zookeeper_session_timeout=host.data.api_session_timeout,
        log_level=host.data.log_level,
        cluster_key_file=cluster_key_file(),
        repo_http_hosts=host.data.repo_http_hosts,
    )
    link = switch_daemon(API_PROGRAM)
    spec = _daemon(API_PROGRAM, "Bismuth control-plane API", "bismuth-api", path)
    program(spec, _changes(config, link, *restart_on))


def frontend_routes() -> bool:
    """Whether bismuthfe keeps routes to the nodes' pools (fleets with role groups)."""
    chosen = host.data.fe_node_routes
    return (not single_node()) if chosen is None else bool(chosen)


def frontend_config(path: str) -> OperationMeta:
    return template_file(
        "Frontend configuration",
        "fe.toml.j2",
        path,
        "640",
        zookeeper=connect_string(reads=True),  # the observers, if any
        zookeeper_env=host.data.zookeeper_env,
        bind=host.data.fe_bind,
        admin_bind=host.data.fe_admin_bind,
        agent_port=host.data.agent_port,
        run_dir=f"{host.data.run_dir}/fe",
        temp_dir=f"{host.data.var_dir}/fe",
        workers=host.data.fe_workers,
        trusted_proxies=host.data.fe_trusted_proxies,
        max_body_size=host.data.fe_max_body_size,
        max_header_size=host.data.fe_max_header_size,
        client_timeout=host.data.fe_client_timeout,
        manage_node_routes=frontend_routes(),
        container_network=host.data.container_network,
        log_level=host.data.log_level,
        frontend_key_file=frontend_key_file(),
    )


@deploy("Bismuth frontend")
def frontend(restart_on: Sequence[OperationMeta | None] = ()) -> None:
    """nginx on ``fe_bind`` (``bismuthfe-nginx``) and its controller ``bismuthfe`` (health on
    ``fe_admin_bind``), from one config. A changed config, version or ``restart_on`` file
    (the frontend key, whose agent credential nginx sends) reloads nginx in place (no
    request dropped, routes kept) and restarts the controller."""
    if not has_role(FRONTENDS):
        return
    stop_debian_service("nginx.service")
    path = f"{host.data.etc_dir}/fe.toml"
    config = frontend_config(path)
    link = switch_daemon(FE_PROGRAM)
    nginx = Program(
        name=FE_NGINX_PROGRAM,
        description="Bismuth frontend: nginx",
        command=(daemon_bin(FE_PROGRAM, "bismuthfe-nginx"), "--config", path),
        directory=host.data.var_dir,
        priority=290,  # before its controller; stopped after it
        stop_signal="QUIT",  # finish the requests in flight (up to shutdown_timeout)
        stop_seconds=40,
    )
    started = program(nginx)
    server.shell(
        name="Reload the frontend's nginx for its new configuration",
        commands=[
            shlex.join([daemon_bin(FE_PROGRAM, "bismuthfe-nginx"), "--config", path, "--reload"])
        ],
        _if=lambda: not started() and _any(*_changes(config, link, *restart_on)),
    )
    spec = _daemon(FE_PROGRAM, "Bismuth frontend: nginx's controller", "bismuthfe", path)
    program(spec, _changes(config, link, *restart_on))


def _any(*ops: OperationMeta) -> bool:
    return any(op.did_change() for op in ops)
