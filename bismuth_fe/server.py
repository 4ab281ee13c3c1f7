"""Running the controller: its admin app on the admin address, until told to stop.

:class:`Frontend` is what ``main()`` runs and what tests start in-process. Stopping it ends
the controller and closes the ZooKeeper session; nginx keeps serving with its last table.
"""

from __future__ import annotations

import logging

from aiohttp import web

from bismuth_core import eventloop

from .app import FrontendDeps, build_deps, create_admin_app
from .config import FrontendConfig

log = logging.getLogger(__name__)


class Frontend:
    """One running ``bismuthfe`` controller: ``await start()``, then ``await stop()``."""

    def __init__(self, config: FrontendConfig, deps: FrontendDeps | None = None) -> None:
        self.config = config
        self.deps = deps or build_deps(config)
        self._admin: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(create_admin_app(self.deps), access_log=None)
        await runner.setup()
        try:
            host, port = self.config.admin_address()
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._admin = runner
        log.info(
            "controlling nginx through %s; admin on %s", self.config.control_socket, self.admin_url
        )

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None

    @property
    def admin_url(self) -> str:
        if self._admin is None or not self._admin.addresses:
            raise RuntimeError("frontend is not running")
        host, port = self._admin.addresses[0][:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def run(config: FrontendConfig) -> None:
    """Control nginx until SIGTERM or SIGINT."""
    frontend = Frontend(config)
    await frontend.start()
    try:
        await eventloop.until_signalled()
        log.info("shutting down; nginx keeps serving its last table")
    finally:
        await frontend.stop()
    log.info("stopped")
