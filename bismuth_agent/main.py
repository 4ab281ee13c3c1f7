"""``bismuthd`` entry point: read config, connect to ZooKeeper and containerd, serve."""

from __future__ import annotations

import argparse
import logging

from bismuth_core import eventloop
from bismuth_core.config import ConfigError, add_common_arguments, flag_overrides, load_config
from bismuth_core.daemon import run_daemon
from bismuth_core.layout import parse_ipv4

from .config import AgentConfig
from .service import AgentService

log = logging.getLogger(__name__)


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


async def serve(config: AgentConfig) -> None:
    service = AgentService(config)
    await service.start()
    try:
        log.info("agent of node %s serving on port %d", config.node_ip, config.port)
        await eventloop.until_signalled()
        log.info("shutting down; containers keep running")
    finally:
        await service.stop()


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
