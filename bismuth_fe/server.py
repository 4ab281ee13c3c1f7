"""Running a frontend: the public and admin apps on their addresses, and graceful shutdown.

:class:`Frontend` is what ``main()`` runs and what tests start in-process. Stopping it first
closes the public listener, then lets in-flight requests finish for up to
``shutdown_timeout`` seconds, then closes the ZooKeeper session and the admin listener.
"""

from __future__ import annotations

import logging

from aiohttp import web

from bismuth_core import eventloop

from .app import FrontendDeps, build_deps, create_admin_app, create_app
from .config import FrontendConfig

log = logging.getLogger(__name__)


class Frontend:
    """One running ``bismuthfe``: ``await start()``, then ``await stop()``."""

    def __init__(self, config: FrontendConfig, deps: FrontendDeps | None = None) -> None:
        self.config = config
        self.deps = deps or build_deps(config)
        self._public: web.AppRunner | None = None
        self._admin: web.AppRunner | None = None

    async def start(self) -> None:
        try:
            self._public = await _serve(
                create_app(self.deps), self.config.public_address(), self.config
            )
            self._admin = await _serve(
                create_admin_app(self.deps), self.config.admin_address(), self.config
            )
        except BaseException:
            await self.stop()
            raise
        log.info("serving on %s, admin on %s", self.url, self.admin_url)

    async def stop(self) -> None:
        if self._public is not None:
            await self._public.cleanup()  # stop accepting, drain, then close ZooKeeper
            self._public = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None

    @property
    def url(self) -> str:
        return _url(self._public)

    @property
    def admin_url(self) -> str:
        return _url(self._admin)


async def _serve(
    app: web.Application, address: tuple[str, int], config: FrontendConfig
) -> web.AppRunner:
    runner = web.AppRunner(app, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, address[0], address[1]).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _url(runner: web.AppRunner | None) -> str:
    if runner is None or not runner.addresses:
        raise RuntimeError("frontend is not running")
    host, port = runner.addresses[0][:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def run(config: FrontendConfig) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    frontend = Frontend(config)
    await frontend.start()
    try:
        await eventloop.until_signalled()
        log.info("shutting down: finishing in-flight requests (up to %gs)", config.shutdown_timeout)
    finally:
        await frontend.stop()
    log.info("stopped")
