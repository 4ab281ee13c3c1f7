"""Configuration of the frontend: one frozen dataclass for both of its processes.

``bismuthfe-nginx`` (the data plane: nginx with the toolkit's Lua, serving ``bind``) and
``bismuthfe`` (its controller: ZooKeeper to nginx's route table, the admin address) read the
same file, so they agree on the control socket and every limit. Values come from defaults, a
TOML file (``--config``), ``BISMUTH_<FIELD>`` environment variables and flags, in that order
(see :func:`bismuth_core.config.load_config`).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bismuth_core.config import (
    ConfigError,
    add_common_arguments,
    flag_overrides,
    load_config,
    split_hostport,
)

DEFAULT_PORT = 8000
DEFAULT_ADMIN_PORT = 8003
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class FrontendConfig:
    """Everything the frontend reads at start; see the field comments for units."""

    zookeeper: str = "127.0.0.1:2181"
    zookeeper_env: str = "default"
    bind: str = "127.0.0.1:8000"  # public HTTP (nginx), ADDR:PORT
    admin_bind: str = "127.0.0.1:8003"  # the controller's /healthz and /metrics, ADDR:PORT
    agent_port: int = 8001  # every agent listens on <node ip>:agent_port
    # nginx's runtime directory (mode 0700, root's): its rendered config, pid file and the
    # control socket through which only the controller changes the route table.
    run_dir: str = "/run/bismuth/fe"
    temp_dir: str = "/var/lib/bismuth/fe"  # request bodies buffered for the agent path
    nginx: str = "/usr/sbin/nginx"
    nginx_modules: str = "/usr/lib/nginx/modules"  # ndk_http_module.so, ngx_http_lua_module.so
    nginx_user: str = "www-data"  # nginx's workers run as this user when started as root
    workers: int = 0  # nginx worker processes; 0 = one per core
    worker_connections: int = 16384
    connect_timeout: float = 2.0  # seconds to connect to a container (or agent)
    request_timeout: float = 60.0  # seconds a container may be silent: until its response
    #                                head, and between two reads or writes after that
    client_timeout: float = 30.0  # seconds a client may take to send its head, or be silent
    #                               while sending its body or reading the answer
    keepalive_timeout: float = 75.0  # seconds an idle client connection is kept
    max_body_size: int = 10485760  # request body bytes
    max_header_size: int = 8192  # bytes of the request line, and of any one header
    max_header_buffers: int = 4  # the whole head fits in this many max_header_size buffers
    retries: int = 2  # more containers tried after one could not be connected to
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For/-Proto are kept
    upstream_keepalive: int = 128  # idle connections to containers kept per worker
    upstream_idle_timeout: float = 4.0  # seconds one is kept (below the servers' own)
    routes_memory: int = 64  # MiB of shared memory for the route table
    shutdown_timeout: float = 30.0  # seconds in-flight requests get on a graceful stop
    sync_interval: float = 1.0  # seconds between the controller's checks of nginx's table
    manage_node_routes: bool = False  # keep a route to each node's container pool
    container_network: str = ""  # where every node's pool lies: the only routes it touches
    access_log: str = ""  # nginx's access log file; "" = none
    log_level: str = "info"
    # The frontend key (written by the deploy, derived from the cluster key): the agents'
    # credential comes from it. Required.
    frontend_key_file: str = ""

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "request_timeout",
            "client_timeout",
            "keepalive_timeout",
            "upstream_idle_timeout",
            "shutdown_timeout",
            "sync_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config {name}: must be > 0 seconds")
        for name in ("max_body_size", "max_header_buffers", "routes_memory", "worker_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name}: must be >= 1")
        if self.max_header_size < 1024:
            raise ConfigError("config max_header_size: must be >= 1024 bytes")
        for name in ("retries", "workers", "upstream_keepalive"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config {name}: must be >= 0")
        if not 1 <= self.agent_port <= 65535:
            raise ConfigError("config agent_port: must be a TCP port (1-65535)")
        if self.nginx_user and not _USER.fullmatch(self.nginx_user):
            raise ConfigError(f"config nginx_user: {self.nginx_user!r} is not a user name")
        for name in ("run_dir", "temp_dir"):
            if not Path(getattr(self, name)).is_absolute():
                raise ConfigError(f"config {name}: must be an absolute path")
        self.proxy_networks()
        self.pools_network()
        self.public_address()
        self.admin_address()

    def public_address(self) -> tuple[str, int]:
        return _address("bind", self.bind, DEFAULT_PORT)

    def admin_address(self) -> tuple[str, int]:
        return _address("admin_bind", self.admin_bind, DEFAULT_ADMIN_PORT)

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"config trusted_proxies: {exc}") from exc

    def pools_network(self) -> ipaddress.IPv4Network | None:
        if not self.container_network:
            return None
        try:
            return ipaddress.IPv4Network(self.container_network)
        except ValueError as exc:
            raise ConfigError(f"config container_network: {exc}") from exc

    @property
    def control_socket(self) -> Path:
        """nginx's control endpoint: only root (the controller) can reach it."""
        return Path(self.run_dir) / "control.sock"

    @property
    def nginx_conf(self) -> Path:
        return Path(self.run_dir) / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return Path(self.run_dir) / "nginx.pid"


def _address(name: str, value: str, default_port: int) -> tuple[str, int]:
    try:
        host, port = split_hostport(value, default_port)
    except ConfigError as exc:
        raise ConfigError(f"config {name}: {exc}") from exc
    if not host:
        raise ConfigError(f"config {name}: {value!r} has no address")
    return host, port


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common_arguments(parser, "ADDR:PORT nginx serves requests on (default 127.0.0.1:8000)")
    parser.add_argument(
        "--admin-bind",
        metavar="ADDR:PORT",
        help="ADDR:PORT for /healthz and /metrics (default 127.0.0.1:8003)",
    )
    parser.add_argument("--run-dir", metavar="DIR", help="nginx's runtime directory")
    return parser


def config_from_args(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> FrontendConfig:
    """Parse ``argv`` and load the config; a bad value exits with usage status 2."""
    return parse_command_line(argv, env, parser)[1]


def parse_command_line(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> tuple[argparse.Namespace, FrontendConfig]:
    """The parsed flags and the config they select (``bismuthfe``'s parser by default)."""
    parser = parser or build_parser("bismuthfe", "Keep nginx's route table in step with ZooKeeper.")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in flag_overrides(args).items() if k != "reload"}
    try:
        return args, load_config(FrontendConfig, file=args.config, env=env, overrides=overrides)
    except ConfigError as exc:
        parser.error(str(exc))
