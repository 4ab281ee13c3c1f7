"""``bismuth-api`` entry point: read config, connect to ZooKeeper, serve."""

from __future__ import annotations

import argparse
import logging

from bismuth_core import eventloop, operations, tenancy
from bismuth_core.config import add_common_arguments, flag_overrides, load_config, split_hostport
from bismuth_core.daemon import run_daemon, serving

from .app import build_deps, connect, create_app
from .config import ApiConfig

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bismuth-api", description=__doc__)
    add_common_arguments(parser, "ADDR:PORT to serve the API on (default 127.0.0.1:8002)")
    parser.add_argument(
        "--node-loss-grace",
        type=float,
        metavar="SECONDS",
        help="how long a node may be gone before its containers move",
    )
    return parser.parse_args(argv)


async def serve(config: ApiConfig) -> None:
    host, port = split_hostport(config.bind, 8002)
    zk = connect(config)  # a missing or bad cluster key stops the API before it connects
    deps = build_deps(config, zk)
    await zk.start(timeout=config.connect_timeout)
    # Top-level znodes a newer release added appear in existing environments too, and
    # functions made before tenants existed go to the default tenant.
    await operations.bootstrap(zk)
    await tenancy.bootstrap(zk)
    try:
        async with serving(create_app(deps), host, port):
            log.info(
                "serving on %s:%d (ZooKeeper %s, env %s)",
                host,
                port,
                config.zookeeper,
                config.zookeeper_env,
            )
            await eventloop.until_signalled()
            log.info("shutting down")
    finally:
        await zk.stop()


def main(argv: list[str] | None = None) -> None:
    def load() -> ApiConfig:
        args = parse_args(argv)
        return load_config(ApiConfig, file=args.config, overrides=flag_overrides(args))

    run_daemon("bismuth-api", load, serve)


if __name__ == "__main__":
    main()
