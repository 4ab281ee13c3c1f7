"""``bismuthfe`` entry point: read the configuration, then run the frontend until signalled."""

from __future__ import annotations

from collections.abc import Sequence

from bismuth_core.daemon import run_daemon

from .config import FrontendConfig, config_from_args
from .server import run


def main(argv: Sequence[str] | None = None) -> None:
    def load() -> FrontendConfig:
        return config_from_args(argv)

    run_daemon("bismuthfe", load, run)
