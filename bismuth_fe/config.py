"""Configuration of ``bismuthfe``: one frozen dataclass, and the command line that fills it.

Values come from defaults, a TOML file (``--config``), ``BISMUTH_<FIELD>`` environment
variables and flags, in that order (see :func:`bismuth_core.config.load_config`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bismuth_core.config import (
    ConfigError,
    add_common_arguments,
    flag_overrides,
    load_config,
    split_hostport,
)

DEFAULT_PORT = 8000
DEFAULT_ADMIN_PORT = 8003


@dataclass(frozen=True)
class FrontendConfig:
    """Everything the frontend reads at start; see the field comments for units."""

    zookeeper: str = "127.0.0.1:2181"
    zookeeper_env: str = "default"
    bind: str = "127.0.0.1:8000"  # public HTTP, ADDR:PORT
    admin_bind: str = "127.0.0.1:8003"  # /healthz and /metrics, ADDR:PORT
    agent_port: int = 8001  # every agent listens on <node ip>:agent_port
    connect_timeout: float = 2.0  # seconds to connect to an agent
    request_timeout: float = 60.0  # seconds per upstream attempt, up to the response head
    max_body_size: int = 10485760  # request body bytes
    max_line_size: int = 8190  # request line bytes
    max_field_size: int = 8190  # bytes of one header
    max_headers: int = 100
    retries: int = 2  # more backends tried after one could not be reached
    shutdown_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM
    log_level: str = "info"
    # The frontend key (written by the deploy, derived from the cluster key): the agents'
    # credential comes from it. Required.
    frontend_key_file: str = ""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "request_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config {name}: must be > 0 seconds")
        for name in ("max_body_size", "max_line_size", "max_field_size", "max_headers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name}: must be >= 1")
        if self.retries < 0:
            raise ConfigError("config retries: must be >= 0")
        if not 1 <= self.agent_port <= 65535:
            raise ConfigError("config agent_port: must be a TCP port (1-65535)")
        self.public_address()
        self.admin_address()

    def public_address(self) -> tuple[str, int]:
        return _address("bind", self.bind, DEFAULT_PORT)

    def admin_address(self) -> tuple[str, int]:
        return _address("admin_bind", self.admin_bind, DEFAULT_ADMIN_PORT)


def _address(name: str, value: str, default_port: int) -> tuple[str, int]:
    try:
        host, port = split_hostport(value, default_port)
    except ConfigError as exc:
        raise ConfigError(f"config {name}: {exc}") from exc
    if not host:
        raise ConfigError(f"config {name}: {value!r} has no address")
    return host, port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bismuthfe",
        description="Route HTTP requests by Host header to running Bismuth containers.",
    )
    add_common_arguments(parser, "ADDR:PORT to serve requests on (default 127.0.0.1:8000)")
    parser.add_argument(
        "--admin-bind",
        metavar="ADDR:PORT",
        help="ADDR:PORT for /healthz and /metrics (default 127.0.0.1:8003)",
    )
    return parser


def config_from_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> FrontendConfig:
    """Parse ``argv`` and load the config; a bad value exits with usage status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return load_config(
            FrontendConfig, file=args.config, env=env, overrides=flag_overrides(args)
        )
    except ConfigError as exc:
        parser.error(str(exc))
