"""One way to run a daemon: configuration, logging, the event loop, exit codes, serving.

``run_daemon`` is every daemon's ``main()``: it loads the configuration (a bad value exits
with status 2 and a message naming the key, as ``argparse`` does for bad flags), sets up
logging, and runs the daemon's ``serve(config)`` coroutine on uvloop until it returns (on
SIGTERM or SIGINT, see :func:`.eventloop.until_signalled`). A dependency that cannot be
reached at start (ZooKeeper, containerd) or an address that cannot be bound exits with
status 1 and one line saying why.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NoReturn, Protocol, TypeVar

from aiohttp import web

from . import eventloop
from .config import ConfigError
from .errors import BismuthError
from .logs import setup_logging

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # could not start or run: a dependency, an address
EXIT_CONFIG = 2  # bad configuration or flags


class DaemonConfig(Protocol):
    @property
    def log_level(self) -> str: ...


C = TypeVar("C", bound=DaemonConfig)


def run_daemon(
    name: str, load: Callable[[], C], serve: Callable[[C], Coroutine[Any, Any, None]]
) -> None:
    """Load, set up logging, serve until signalled; exits 1 or 2 on failure (see above)."""
    try:
        config = load()
    except ConfigError as exc:
        _exit(name, str(exc), EXIT_CONFIG)
    setup_logging(config.log_level)
    try:
        eventloop.run(serve(config))
    except ConfigError as exc:  # found while starting, e.g. an unreadable key file
        _exit(name, str(exc), EXIT_CONFIG)
    except BismuthError as exc:
        _exit(name, exc.message, EXIT_FAILED)
    except OSError as exc:
        _exit(name, str(exc), EXIT_FAILED)


def _exit(name: str, message: str, code: int) -> NoReturn:
    print(f"{name}: {message}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, sock: socket.socket | None = None, **site: Any
) -> AsyncIterator[None]:
    """Serve ``app`` on ``host:port`` (or on the listening ``sock``) for the body of the
    ``with``; clean up after."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        if sock is not None:
            await web.SockSite(runner, sock).start()
        else:
            await web.TCPSite(runner, host, port, **site).start()
        yield
    finally:
        await runner.cleanup()
