"""Configuration of ``bismuthd``: file, ``BISMUTH_*`` environment, then flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar


def _memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class AgentConfig:
    # Keys of older releases' files, still read (into the table they moved to).
    LEGACY_KEYS: ClassVar[dict[str, tuple[str, str]]] = {
        f"provider_s3_{key}": ("provider_s3", key)
        for key in ("endpoint", "region", "access_key", "secret_key")
    }

    zookeeper: str = "127.0.0.1:2181"
    zookeeper_env: str = "default"
    # The node's IPv4 address: its name in ZooKeeper and where /invoke and /logs are served.
    bind: str = "127.0.0.1"
    port: int = 8001
    log_level: str = "info"
    containerd_address: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "bismuth"
    state_dir: str = "/var/lib/bismuth/agent"
    log_dir: str = "/var/log/bismuth/containers"
    # cgroup parent of this agent's containers ("" = /bismuth-<node ip>): never shared
    # between two agents on one machine.
    cgroup_parent: str = ""
    # Each container's ids 0..id_map_size-1 map onto a host range of its own: range i starts
    # at id_map_start + i * id_map_size, i < id_map_count (also the most containers a node runs).
    id_map_start: int = 1_000_000
    id_map_size: int = 65536
    id_map_count: int = 1024
    # Free ranges kept remapped ahead of need for each image started on this node (in the
    # background, at the lowest priority): a new range costs a start seconds otherwise.
    id_map_spare: int = 2
    # Capacity advertised for scheduling (0 = all of this machine's cpus / memory).
    cpus: float = 0.0
    memory: int = 0
    pids_limit: int = 512
    # A static init run as each container's PID 1, mounted read-only from the host (Debian's
    # tini): it hands signals to the function's process and reaps orphans. "" = none (the
    # function's process is PID 1, which ignores SIGTERM unless it handles it).
    init_path: str = "/usr/bin/tini-static"
    # Seconds a Running container that is no longer wanted serves on before its SIGTERM, so
    # that frontends (told by the same ZooKeeper change) stop sending to it first.
    stop_drain: float = 0.5
    # Seconds: SIGTERM to SIGKILL on removal; restart backoff after a task exits.
    stop_grace: float = 10.0
    restart_backoff: float = 1.0
    restart_backoff_cap: float = 60.0
    # Executable mode: per-request timeout (s, also for receiving the body), concurrent runs
    # per container (a request waits for one before its body is read), the largest body, and
    # the most stdout one run may write (past it the run is killed: 502).
    exec_timeout: float = 30.0
    exec_concurrency: int = 8
    exec_max_body: int = 10 << 20
    exec_max_output: int = 6 << 20
    # Server mode: seconds to get a connection to the container (waiting for a free one of
    # the proxy_max_connections it may have open at once, then connecting), and seconds it
    # may send nothing before or during its answer.
    proxy_connect_timeout: float = 5.0
    proxy_idle_timeout: float = 60.0
    proxy_max_connections: int = 64
    # Bytes of stdout+stderr kept per container.
    log_max_bytes: int = 10 << 20
    # A definition's repo: fetched over https (plain http only from these hosts, "name" or
    # "name:port"), trusting the system's CAs or those in git_ca_file; into a tmpfs of at most
    # repo_max_bytes, within repo_timeout seconds.
    repo_http_hosts: tuple[str, ...] = ()
    git_ca_file: str = ""
    repo_max_bytes: int = 256 << 20
    repo_timeout: float = 120.0
    # Seconds a Server entrypoint may take to accept connections before Failed.
    start_timeout: float = 60.0
    # Cores a container may use until its Server entrypoint accepts connections (when its
    # function's cpu is less): an interpreter's start is CPU-bound, and a start held to a
    # quarter of a core takes four times as long. At Running the quota is the function's.
    # 0 = the function's cpu from the first instruction.
    start_cpu: float = 1.0
    # Container subnets (a /30 each) come from this pool: the node's own, distinct from every
    # other node's (the deploy assigns them), announced in ZooKeeper for frontends to route.
    network_pool: str = "10.253.0.0/16"
    # Every node's pool lies in this fleet-wide network; containers never reach any of it.
    container_network: str = ""
    # Addresses (or networks) of the fleet's frontends: only they, and this host, reach a
    # container's serving port.
    frontends: tuple[str, ...] = ()
    # Registries (host[:port]) pulled from over plain HTTP: a fleet's own registry.
    plain_http_registries: tuple[str, ...] = ()
    # Outbound internet access from containers through NAT.
    outbound_nat: bool = False
    # Per-container egress rate limit in kbit/s (0 = none).
    rate_limit_kbit: int = 0
    # The per-container provider: where its data lives (local:///path or s3://bucket/prefix),
    # the S3 endpoint and credentials for s3://, and how to run it (default: this Python's
    # ``-m bismuth_provider``).
    provider_storage: str = "local:///var/lib/bismuth/data"
    # An s3:// storage's settings, handed to every provider as they are (keys of the
    # provider's S3Settings: endpoint, region, access_key, secret_key, part_size, ...).
    provider_s3: dict[str, str] = field(default_factory=dict)
    provider_command: tuple[str, ...] = ()
    # Run providers as this user ("" = the agent's own, root): it owns local storage's data;
    # the agent hands it its container's token, and answers its secret reads itself.
    provider_user: str = ""
    # Each provider's cgroup (under the agent's parent): memory (bytes, the node's capacity
    # announces it per container) and processes.
    provider_memory: int = 96 << 20
    provider_pids: int = 64
    # Fork providers from one zygote that has imported them (as their user, in a cgroup of
    # its own with their limits): a provider answers in milliseconds instead of after a
    # Python start. false: each provider is a new Python process.
    provider_zygote: bool = True
    provider_log_level: str = "info"
    # File with the cluster key that opens function secrets ("" = secrets unavailable).
    cluster_key_file: str = ""

    @property
    def node_ip(self) -> str:
        return self.bind

    @property
    def cgroup_root(self) -> str:
        return self.cgroup_parent or f"/bismuth-{self.bind}"

    @property
    def advertised_cpus(self) -> float:
        return self.cpus or float(os.cpu_count() or 1)

    @property
    def advertised_memory(self) -> int:
        return self.memory or _memory_bytes()
