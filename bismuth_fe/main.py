"""``bismuthfe`` entry point: read the configuration, then control nginx until signalled."""

from __future__ import annotations

from collections.abc import Sequence

from bismuth_core.credentials import frontend_credentials
from bismuth_core.daemon import run_daemon

from .config import FrontendConfig, config_from_args
from .server import run


def main(argv: Sequence[str] | None = None) -> None:
    def load() -> FrontendConfig:
        config = config_from_args(argv)
        # nginx, restarted with the same file, needs the key: refuse to run without it
        frontend_credentials(config.frontend_key_file)
        return config

    run_daemon("bismuthfe", load, run)
