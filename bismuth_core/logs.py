"""Logging with fields: ``logger.info("msg", extra={"function_id": ...})`` prints ``key=value``.

Daemons call :func:`setup_logging` once in ``main()``; everything else uses
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import sys

FIELDS = ("node", "function_id", "container_id", "hostname", "backend", "path", "error")


class FieldFormatter(logging.Formatter):
    """``2026-01-01T00:00:00 INFO name: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name)]
        if not extras:
            return base
        head, sep, tail = base.partition("\n")
        return f"{head} {' '.join(extras)}{sep}{tail}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        FieldFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kazoo").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("aiohttp.access").setLevel(max(root.level, logging.WARNING))
