"""The agent, ``bismuthd``: runs this node's containers through containerd.

It runs on the hosts of the ``agents`` group. Its TOML config is rendered from group data to
``<etc_dir>/agent.toml``; it runs as the program ``bismuth-agent`` once containerd answers
and the node is provisioned (deploy.py orders the tasks so); it restarts when its config,
the cluster key it reads or its version link changed. Only its own process is signalled on a
stop or restart: the per-container providers it started keep running, and the next agent
adopts them. The deploy then waits, with a deadline, until ZooKeeper lists the node's agent
as alive, so that functions can be placed on it. Its container pool is its own slice of the
fleet's (``tasks/pools.py``), and its firewall lets only the fleet's frontends reach
containers' serving ports.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Users
from pyinfra.operations import files, server

from tasks.cluster import bismuthctl
from tasks.cluster_key import cluster_key_file
from tasks.facts import AliveNodes
from tasks.local import streamed_shell
from tasks.pools import node_pool
from tasks.rendering import template_file
from tasks.roles import AGENTS, FRONTENDS, has_role, single_node
from tasks.services import Program, program, program_log
from tasks.toolkit import daemon_bin, provider_command, switch_daemon, tool_bin
from tasks.waiting import wait_until
from tasks.zookeeper import connect_string

PROVIDER_USER = "bismuth-provider"

AGENT_PROGRAM = "bismuth-agent"

# Run by the toolkit's Python on `bismuthctl --json nodes`: exit 0 iff node argv[1] is alive.
_ALIVE_CHECK = (
    "import json, sys; nodes = json.load(sys.stdin)['nodes']; "
    "sys.exit(not any(n['ip'] == sys.argv[1] and n['alive'] for n in nodes))"
)


def state_dir() -> str:
    return str(host.data.agent_state_dir or f"{host.data.var_dir}/agent")


def container_log_dir() -> str:
    return str(host.data.container_log_dir or f"{host.data.log_dir}/containers")


def provider_storage() -> str:
    """Where providers keep key/value pairs and blobs: ``local://<var_dir>/data`` by default."""
    return str(host.data.provider_storage or f"local://{host.data.var_dir}/data")


def provider_user() -> str:
    """The user providers run as ("" = root): see ``provider_user`` in group data."""
    chosen = host.data.provider_user
    return PROVIDER_USER if chosen is None else str(chosen)


def agent_program(config: str) -> Program:
    return Program(
        name=AGENT_PROGRAM,
        description="Bismuth agent (bismuthd)",
        command=(daemon_bin(AGENT_PROGRAM, "bismuthd"), "--config", config),
        directory=host.data.var_dir,
        priority=400,  # last up, first down: after containerd and ZooKeeper
        kill_mode="process",  # its providers outlive it; containers are containerd's
    )


def agent_config(path: str) -> OperationMeta:
    """Render ``agent.toml``; the result says whether it changed."""
    return template_file(
        "bismuthd configuration",
        "agent.toml.j2",
        path,
        "640",
        zookeeper=connect_string(),
        zookeeper_env=host.data.zookeeper_env,
        bind=host.data.node_ip,
        port=host.data.agent_port,
        log_level=host.data.log_level,
        containerd_address=host.data.containerd_address,
        containerd_namespace=host.data.containerd_namespace,
        state_dir=state_dir(),
        log_dir=container_log_dir(),
        cgroup_parent=host.data.agent_cgroup_parent,
        network_pool=node_pool(),
        container_network=host.data.container_network,
        frontends=frontend_addresses(),
        plain_http_registries=host.data.plain_http_registries,
        outbound_nat=host.data.outbound_nat,
        rate_limit_kbit=host.data.rate_limit_kbit,
        cluster_key_file=cluster_key_file(),
        repo_http_hosts=host.data.repo_http_hosts,
        git_ca_file=host.data.git_ca_file,
        repo_max_bytes=host.data.repo_max_bytes,
        provider_storage=provider_storage(),
        provider_s3=host.data.provider_s3,
        provider_user=provider_user(),
        provider_command=provider_command(),
        provider_memory=host.data.provider_memory,
        provider_pids=host.data.provider_pids,
        provider_zygote=host.data.provider_zygote,
        id_map_spare=host.data.id_map_spare,
        start_cpu=host.data.start_cpu,
    )


def frontend_addresses() -> list[str]:
    """The node addresses of the fleet's frontends (none on a single node: the host itself
    always reaches its containers)."""
    if single_node():
        return []
    return [str(m.data.node_ip) for m in inventory.get_group(FRONTENDS, default=[])]


def node_alive() -> bool:
    """Whether ZooKeeper lists this node's agent as alive, asked when the deploy executes."""
    return host.data.node_ip in host.get_fact(AliveNodes, bismuthctl=bismuthctl())


@deploy("Bismuth agent")
def agent(restart_on: Sequence[OperationMeta | None] = ()) -> None:
    """Directories, config and ``bismuthd``; then wait until the node's agent is alive.

    ``restart_on``: other files it reads (the cluster key); a change restarts it (``None``:
    no such file here).
    """
    if not has_role(AGENTS):
        return
    # 711: containers' /etc files are bind-mounted from here by the container's own root
    files.directory(name="Agent state directory", path=state_dir(), mode="711")
    files.directory(name="Container log directory", path=container_log_dir(), mode="750")
    user = provider_user()
    if user:
        # A shell rather than server.user: hosts sharing /etc (lab hosts) create it at once,
        # and the losers of that race must find it made, not fail.
        options = ["--system", "--home-dir", "/nonexistent", "--no-create-home"]
        add = shlex.join(["useradd", *options, "--shell", "/usr/sbin/nologin", user])
        server.shell(
            name=f"System user {user} for the providers",
            commands=[
                f"id -u {shlex.quote(user)} >/dev/null 2>&1 || {add} || id -u {shlex.quote(user)}"
            ],
            _if=lambda: user not in host.get_fact(Users),
        )
    path = f"{host.data.etc_dir}/agent.toml"
    config = agent_config(path)
    link = switch_daemon(AGENT_PROGRAM)
    spec = agent_program(path)
    program(spec, [op for op in (config, link, *restart_on) if op is not None])
    check = shlex.join([tool_bin("python"), "-c", _ALIVE_CHECK, host.data.node_ip])
    streamed_shell(
        "Wait until this node's agent is alive",
        wait_until(
            f"{bismuthctl('--json', 'nodes')} 2>/dev/null | {check}",
            float(host.data.start_wait),
            f"agent of node {host.data.node_ip} alive",
            program_log(spec.name),
            interval=0.5,
        ),
        _if=lambda: not node_alive(),
    )
