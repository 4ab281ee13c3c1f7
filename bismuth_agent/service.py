"""One agent as ``bismuthd`` runs it: every part wired in one place, started and stopped
as a whole. ``main`` runs it until signalled; the tests start it in-process, so what they
exercise is what runs.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

from aiohttp import web

from bismuth_core import __version__
from bismuth_core.config import ConfigError
from bismuth_core.credentials import ClusterCredentials, cluster_credentials, writer_access
from bismuth_core.layout import NodeAlive
from bismuth_core.zk import ZooKeeper

from .agent import Agent
from .config import AgentConfig
from .containerd.client import ContainerdClient
from .http import AgentMetrics, HttpDeps, InvokeLimits, create_app
from .logstore import LogStore
from .network import Firewall, NetworkAdapter, NetworkSettings
from .presence import NodePresence
from .runtime import ContainerRuntime
from .timeline import Timelines

INTERFACE_GROUP_BASE = 0xB1500000
SESSION_TIMEOUT = 10.0  # seconds of ZooKeeper session: how long a lost agent stays "alive"


def network_settings(config: AgentConfig) -> NetworkSettings:
    """Per node: its own table and interface group, so agents sharing a machine (lab hosts,
    tests) never apply their rules to each other's containers."""
    return NetworkSettings(
        pool=config.network_pool,
        interface_group=INTERFACE_GROUP_BASE + int(IPv4Address(config.node_ip)) % 0x100000,
        firewall_id="n" + config.node_ip.replace(".", "_"),
        masquerade=config.outbound_nat,
        blocked_networks=(config.container_network,) if config.container_network else (),
        frontends=config.frontends,
        download_rate=config.rate_limit_kbit * 1000,
        upload_rate=config.rate_limit_kbit * 1000,
        state_file=f"{config.state_dir}/network/allocations.json",
    )


def agent_credentials(config: AgentConfig) -> ClusterCredentials:
    """Its ZooKeeper identity and the credential callers must present: the agent cannot run
    without the cluster key."""
    if not config.cluster_key_file:
        raise ConfigError(
            "config cluster_key_file: required (its ZooKeeper identity, and the credential "
            "callers of /invoke and /logs must present, derive from the cluster key)"
        )
    return cluster_credentials(file=config.cluster_key_file)


class AgentService:
    """The agent of one node: ZooKeeper and containerd clients, runtime, presence, the
    reconcile loop and the HTTP server. Building it does no I/O (a bad setting raises
    ``ConfigError`` here); :meth:`start` connects and serves, :meth:`stop` lets go and
    leaves every container running."""

    def __init__(self, config: AgentConfig, session_timeout: float = SESSION_TIMEOUT) -> None:
        self.config = config
        credentials = agent_credentials(config)  # a missing or bad key stops it first
        self.zk = ZooKeeper(
            config.zookeeper,
            config.zookeeper_env,
            access=writer_access(credentials),
            session_timeout=session_timeout,
        )
        self.ctrd = ContainerdClient(config.containerd_address, config.containerd_namespace)
        settings = network_settings(config)
        logs = LogStore(config.log_dir, config.log_max_bytes)
        network, firewall = NetworkAdapter(settings), Firewall(settings)
        timelines = Timelines()
        self.runtime = ContainerRuntime(
            config, self.ctrd, network, firewall, logs, self.zk, timelines
        )
        wake = asyncio.Event()
        alive = NodeAlive(
            config.advertised_cpus,
            config.advertised_memory,
            __version__,
            container_overhead=config.provider_memory,
            pool=settings.pool,
        )
        presence = NodePresence(self.zk, config.node_ip, alive, wake.set)
        metrics = AgentMetrics.create()
        self.agent = Agent(config, self.runtime, presence, logs, metrics, wake, timelines)
        limits = InvokeLimits.from_config(config)
        refresh = self.agent.refresh_metrics
        deps = HttpDeps(
            self.agent, logs, metrics, credentials.frontend, limits, refresh, timelines=timelines
        )
        self._runner = web.AppRunner(create_app(deps), access_log=None)

    @property
    def url(self) -> str:
        return f"http://{self.config.node_ip}:{self.config.port}"

    async def start(self) -> None:
        await self.zk.start()
        await self.ctrd.ensure_namespace()
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.node_ip, self.config.port).start()
        await self.agent.start()

    async def stop(self) -> None:
        try:
            await self.agent.stop()
            await self._runner.cleanup()
        finally:
            await self.zk.stop()
            await self.ctrd.close()
