"""A frontend's configuration for tests: loopback ports of its own, the session's key."""

from __future__ import annotations

from bismuth_fe.config import FrontendConfig


def frontend_config(
    zookeeper: str, env: str, agent_port: int, frontend_key_file: str, **overrides: object
) -> FrontendConfig:
    settings: dict[str, object] = {
        "zookeeper": zookeeper,
        "zookeeper_env": env,
        "bind": "127.0.0.1:0",
        "admin_bind": "127.0.0.1:0",
        "agent_port": agent_port,
        "shutdown_timeout": 2.0,
        "frontend_key_file": frontend_key_file,
        **overrides,
    }
    return FrontendConfig(**settings)  # type: ignore[arg-type]
