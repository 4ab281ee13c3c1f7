"""``bismuthd`` entry point: read config, connect to ZooKeeper and containerd, serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
from ipaddress import IPv4Address

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.network import Firewall, NetworkAdapter, NetworkSettings
from bismuth_core import __version__, eventloop
from bismuth_core.config import ConfigError, add_common_arguments, flag_overrides, load_config
from bismuth_core.credentials import FrontendCredentials, cluster_credentials
from bismuth_core.daemon import run_daemon, serving
from bismuth_core.layout import NodeAlive, parse_ipv4
from bismuth_core.zk import ZooKeeper

from .agent import Agent
from .config import AgentConfig
from .http import AgentMetrics, HttpDeps, InvokeLimits, create_app
from .logstore import LogStore
from .presence import NodePresence
from .runtime import ContainerRuntime

log = logging.getLogger(__name__)

INTERFACE_GROUP_BASE = 0xB1500000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bismuthd", description=__doc__)
    add_common_arguments(
        parser,
        "the node's IPv4 address (its name in ZooKeeper; default "
        "127.0.0.1); /invoke and /logs are served there",
    )
    parser.add_argument("--port", type=int, help="HTTP port (default 8001)")
    parser.add_argument("--containerd-address", metavar="SOCKET")
    parser.add_argument("--state-dir", metavar="DIR")
    return parser.parse_args(argv)


def network_settings(config: AgentConfig) -> NetworkSettings:
    """Per node: its own table and interface group, so agents sharing a machine (lab hosts,
    tests) never apply their rules to each other's containers."""
    return NetworkSettings(
        pool=config.network_pool,
        interface_group=INTERFACE_GROUP_BASE + int(IPv4Address(config.node_ip)) % 0x100000,
        firewall_id="n" + config.node_ip.replace(".", "_"),
        masquerade=config.outbound_nat,
        download_rate=config.rate_limit_kbit * 1000,
        upload_rate=config.rate_limit_kbit * 1000,
        state_file=f"{config.state_dir}/network/allocations.json",
    )


async def serve(config: AgentConfig) -> None:
    credentials = agent_credentials(config)  # a missing or bad key stops it before anything
    zk = ZooKeeper(config.zookeeper, config.zookeeper_env)
    await zk.start()
    ctrd = ContainerdClient(config.containerd_address, config.containerd_namespace)
    await ctrd.ensure_namespace()
    settings = network_settings(config)
    logs = LogStore(config.log_dir, config.log_max_bytes)
    runtime = ContainerRuntime(config, ctrd, NetworkAdapter(settings), Firewall(settings), logs, zk)
    wake = asyncio.Event()
    alive = NodeAlive(
        config.advertised_cpus,
        config.advertised_memory,
        __version__,
        container_overhead=config.provider_memory,
    )
    presence = NodePresence(zk, config.node_ip, alive, wake.set)
    metrics = AgentMetrics.create()
    agent = Agent(config, ctrd, runtime, presence, logs, metrics, wake)
    app = create_app(
        HttpDeps(
            agent,
            logs,
            metrics,
            credentials,
            InvokeLimits.from_config(config),
            refresh_metrics=agent.refresh_metrics,
        )
    )
    try:
        async with serving(app, config.node_ip, config.port):
            await agent.start()
            log.info("agent of node %s serving on port %d", config.node_ip, config.port)
            await eventloop.until_signalled()
            log.info("shutting down; containers keep running")
            await agent.stop()
    finally:
        await zk.stop()
        await ctrd.close()


def agent_credentials(config: AgentConfig) -> FrontendCredentials:
    """The credential callers must present; the agent cannot run without the cluster key."""
    if not config.cluster_key_file:
        raise ConfigError(
            "config cluster_key_file: required (callers of /invoke and /logs are checked "
            "with a credential derived from the cluster key)"
        )
    return cluster_credentials(file=config.cluster_key_file).frontend


def main(argv: list[str] | None = None) -> None:
    def load() -> AgentConfig:
        args = parse_args(argv)
        config = load_config(AgentConfig, file=args.config, overrides=flag_overrides(args))
        if parse_ipv4(config.bind) != config.bind:
            raise ConfigError(f"config bind: {config.bind!r} is not the node's IPv4 address")
        return config

    run_daemon("bismuthd", load, serve)


if __name__ == "__main__":
    main()
