"""``bismuth-provider`` entry point: one container's key/value, blob and secret service.

The agent starts it with its settings in ``BISMUTH_*`` environment variables; it reads the
token file, opens the storage backend, binds the container's host-side address and serves
until SIGTERM. ``bismuth-provider --zygote`` forks providers instead (:mod:`.zygote`).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from bismuth_core import eventloop
from bismuth_core.config import (
    ConfigError,
    add_common_arguments,
    flag_overrides,
    load_config,
    split_hostport,
)
from bismuth_core.daemon import run_daemon, serving

from .app import Limits, ProviderDeps, create_app
from .config import ProviderConfig
from .secretstore import SecretReader
from .storage import open_storage

log = logging.getLogger(__name__)

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; Python names it from 3.12 on
BACKLOG = 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bismuth-provider", description=__doc__)
    add_common_arguments(parser, "ADDR:PORT to serve on (the container's host-side address)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    parser.add_argument("--function-id", metavar="UUID", help="the container's function")
    parser.add_argument("--group-id", metavar="UUID", help="data scope (default: function id)")
    parser.add_argument("--storage", metavar="URL", help="local:///path or s3://bucket/prefix")
    return parser.parse_args(argv)


def build_deps(config: ProviderConfig) -> ProviderDeps:
    if config.token_file == "-":
        token = sys.stdin.readline().strip()
    else:
        token = Path(config.token_file).read_text().strip()
    if len(token) < 32:
        raise ConfigError(f"config token_file: the token from {config.token_file} is too short")
    return ProviderDeps(
        token=token,
        storage=open_storage(config.storage, config.group, config.quotas, _s3_settings(config)),
        secrets=SecretReader(config.secrets_socket, token),
        limits=Limits(config.max_value_bytes, config.max_blob_bytes),
    )


def _s3_settings(config: ProviderConfig) -> object | None:
    """S3 settings, only for an s3:// storage: boto3 costs ~20 MB per provider to import."""
    if not config.storage.startswith("s3:"):
        return None
    from .storage.s3 import S3Settings

    return S3Settings.from_table(config.s3)


def listener(host: str, port: int) -> socket.socket:
    """The listening socket: bound with IP_FREEBIND, so the agent may start the provider
    while the container's veth (which holds ``host``) is still being made; connections
    arrive once it is."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(config: ProviderConfig) -> None:
    host, port = split_hostport(config.bind, 9000)
    async with serving(create_app(build_deps(config)), host, port, sock=listener(host, port)):
        log.info(
            "serving on %s:%d (group %s, storage %s)",
            host,
            port,
            config.group,
            config.storage.split("://", 1)[0],
            extra={"function_id": config.function_id},
        )
        await eventloop.until_signalled()


def main(argv: list[str] | None = None) -> None:
    if (sys.argv[1:] if argv is None else argv) == ["--zygote"]:
        from .zygote import main as fork_providers

        fork_providers()  # see bismuth_provider.zygote
        return

    def load() -> ProviderConfig:
        args = parse_args(argv)
        return load_config(ProviderConfig, file=args.config, overrides=flag_overrides(args))

    run_daemon("bismuth-provider", load, serve)


if __name__ == "__main__":
    main()
