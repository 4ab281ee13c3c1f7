"""``bismuthfe`` entry point: read the configuration, then run the frontend until signalled."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bismuth_core import eventloop
from bismuth_core.errors import Unavailable
from bismuth_core.logs import setup_logging

from .config import config_from_args
from .server import run

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    setup_logging(config.log_level)
    try:
        eventloop.run(run(config))
    except Unavailable as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    return 0
