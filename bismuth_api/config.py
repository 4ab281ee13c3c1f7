"""Configuration of ``bismuth-api``: file, ``BISMUTH_*`` environment, then flags."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ApiConfig:
    zookeeper: str = "127.0.0.1:2181"
    zookeeper_env: str = "default"
    bind: str = "127.0.0.1:8002"
    log_level: str = "info"
    # Seconds a node's ``alive`` znode must stay gone before its containers move elsewhere.
    node_loss_grace: float = 10.0
    # Seconds of the API's ZooKeeper session: a replica that dies (or is cut off) keeps its
    # leadership this long before a standby takes over. ZooKeeper grants 2-20 of its ticks.
    zookeeper_session_timeout: float = 4.0
    # Seconds between the leader's full passes (watches wake it sooner).
    leader_interval: float = 1.0
    # Port every agent serves /invoke and /logs on (its node's address).
    agent_port: int = 8001
    # Largest accepted request body (a definition), bytes; larger gets 413.
    max_body_size: int = 1 << 20
    # Bound on ``max_instances`` of one function.
    max_instances: int = 64
    # cpu bound used while no live node advertises its capacity.
    default_cpu_max: float = 64.0
    # Hosts ("name" or "name:port") a function's repo may come from over plain http (labs);
    # every other repo must be an https URL.
    repo_http_hosts: tuple[str, ...] = ()
    # Seconds to wait for ZooKeeper on start before giving up.
    connect_timeout: float = 30.0
    # The fleet's cluster key, which seals function secrets in ZooKeeper: base64 of 32 bytes,
    # inline or in a file (set one). Without it, setting a secret answers 503.
    cluster_key: str = field(default="", repr=False)
    cluster_key_file: str = ""
    # Most secrets one function may hold (each at most 64 KiB); past it, setting a new one
    # is a 409.
    max_secrets: int = 64
