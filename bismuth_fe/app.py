"""The controller's admin application and its dependencies.

:func:`create_admin_app` serves ``GET /healthz`` and ``GET /metrics`` on the admin address.
Its cleanup context owns the ZooKeeper session, the route cache that follows it, the client
of nginx's control socket and the controller task that keeps nginx's table current (and,
where configured, the routes to the nodes' container pools).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bismuth_core.credentials import frontend_credentials, reader_access
from bismuth_core.weberrors import error_middleware
from bismuth_core.zk import ZooKeeper

from .cache import RouteCache
from .config import FrontendConfig
from .control import ControlError, NginxControl
from .controller import Controller
from .metrics import ControllerView, exposition
from .noderoutes import NodeRouter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendDeps:
    config: FrontendConfig
    zk: ZooKeeper
    cache: RouteCache
    nginx: NginxControl
    controller: Controller
    node_router: NodeRouter | None


def build_deps(config: FrontendConfig) -> FrontendDeps:
    """The frontend's parts; :class:`ConfigError` if its key file is missing or unusable."""
    credentials = frontend_credentials(config.frontend_key_file)
    zk = ZooKeeper(config.zookeeper, config.zookeeper_env, access=reader_access(credentials))
    cache = RouteCache(zk)
    nginx = NginxControl(config.control_socket)
    controller = Controller(cache, nginx, config.agent_port, config.sync_interval)
    router = (
        NodeRouter(cache, config.sync_interval, config.pools_network())
        if config.manage_node_routes
        else None
    )
    return FrontendDeps(config, zk, cache, nginx, controller, router)


DEPS = web.AppKey("deps", FrontendDeps)


def create_admin_app(deps: FrontendDeps) -> web.Application:
    app = web.Application(middlewares=[error_middleware()])
    app[DEPS] = deps
    app.cleanup_ctx.append(zookeeper_ctx)
    app.cleanup_ctx.append(controller_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/timeline", timeline)
    return app


async def zookeeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """The ZooKeeper session and the route cache that follows it."""
    deps = app[DEPS]
    await deps.zk.start()
    try:
        await deps.cache.start()
    except BaseException:
        await deps.zk.stop()
        raise
    log.info(
        "routing table loaded: %d route(s), %d serving backend(s)",
        len(deps.cache.table.routes),
        deps.cache.table.serving_backends,
    )
    yield
    await deps.cache.close()
    await deps.zk.stop()


async def controller_ctx(app: web.Application) -> AsyncIterator[None]:
    """The tasks that push routes into nginx (and the kernel); nginx itself keeps running."""
    deps = app[DEPS]
    tasks = [asyncio.create_task(deps.controller.run(), name="nginx-controller")]
    if deps.node_router is not None:
        tasks.append(asyncio.create_task(deps.node_router.run(), name="node-routes"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await deps.nginx.close()


async def timeline(request: web.Request) -> web.Response:
    """When each recent backend became routable here (:mod:`bismuth_fe.timeline`)."""
    return web.json_response(request.app[DEPS].controller.routed.as_json())


async def healthz(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    table, sync = deps.cache.table, deps.controller.state
    return web.json_response(
        {
            "status": "ok",
            "zookeeper_connected": deps.zk.connected,
            "zookeeper_env": deps.zk.env,
            "routes": len(table.routes),
            "serving_backends": table.serving_backends,
            "nginx": {
                "synced": sync.synced,
                "table": sync.table,
                "routes": sync.routes,
                "last_error": sync.last_error,
            },
        }
    )


async def metrics(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    try:
        counters: dict[str, float] | None = await deps.nginx.metrics()
    except ControlError as exc:
        log.warning("metrics without nginx's counters: %s", exc.message)
        counters = None
    view = ControllerView(
        deps.zk.connected,
        len(deps.cache.table.routes),
        deps.cache.table.serving_backends,
        deps.controller.state,
    )
    return web.Response(
        body=exposition(view, counters), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
