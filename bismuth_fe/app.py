"""The frontend's two aiohttp applications and their dependencies.

:func:`create_app` is the public side: every method and path, routed by ``Host``
(``/healthz`` and ``/metrics`` included; they are not special there). :func:`create_admin_app`
serves ``GET /healthz`` and ``GET /metrics`` on the admin address. Both get their
dependencies through :data:`DEPS`; the public app owns the ZooKeeper session, the route
cache and the agents' client session in its cleanup context.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web
from prometheus_client import CONTENT_TYPE_LATEST
from yarl import URL

from bismuth_core.credentials import FrontendCredentials, frontend_credentials, reader_access
from bismuth_core.errors import BismuthError, InvalidRequest
from bismuth_core.weberrors import error_middleware
from bismuth_core.zk import ZooKeeper

from .balance import OutstandingRequests
from .cache import RouteCache
from .config import FrontendConfig
from .headers import TRACEPARENT, upstream_headers
from .metrics import FrontendMetrics
from .proxy import Forwarder
from .routing import normalize_host
from .tracing import TraceContext, frontend_span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendDeps:
    config: FrontendConfig
    zk: ZooKeeper
    cache: RouteCache
    load: OutstandingRequests
    metrics: FrontendMetrics
    rng: random.Random
    credentials: FrontendCredentials  # presented to the agents


def build_deps(config: FrontendConfig) -> FrontendDeps:
    """The frontend's parts; :class:`ConfigError` if its key file is missing or unusable."""
    credentials = frontend_credentials(config.frontend_key_file)
    zk = ZooKeeper(config.zookeeper, config.zookeeper_env, access=reader_access(credentials))
    cache = RouteCache(zk)
    load = OutstandingRequests()
    metrics = FrontendMetrics()
    metrics.observe_state(
        outstanding=lambda: load.total,
        zookeeper_connected=lambda: zk.connected,
        routes=lambda: len(cache.table.routes),
    )
    return FrontendDeps(config, zk, cache, load, metrics, random.Random(), credentials)


DEPS = web.AppKey("deps", FrontendDeps)
FORWARDER = web.AppKey("forwarder", Forwarder)
TRACE = web.RequestKey("trace", TraceContext)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- public app -------------------------------------------------------------------------


def create_app(deps: FrontendDeps) -> web.Application:
    config = deps.config
    app = web.Application(
        middlewares=[error_middleware(translate=_unsupported_target, observe=_observe)],
        handler_args={
            "max_line_size": config.max_line_size,
            "max_field_size": config.max_field_size,
            "max_headers": config.max_headers,
            "auto_decompress": False,  # bodies pass through as sent
            "handler_cancellation": True,  # a client that leaves cancels its upstream request
        },
    )
    app[DEPS] = deps
    app.cleanup_ctx.append(zookeeper_ctx)
    app.cleanup_ctx.append(forwarder_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
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


async def forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
    """The client session to the agents (no cookie jar: tenants must not share cookies)."""
    deps = app[DEPS]
    session = ClientSession(
        connector=TCPConnector(limit=0),
        timeout=ClientTimeout(total=None, sock_connect=deps.config.connect_timeout),
        cookie_jar=DummyCookieJar(),
        auto_decompress=False,
    )
    app[FORWARDER] = Forwarder(session, deps.cache, deps.load, deps.metrics, deps.config, deps.rng)
    yield
    await session.close()


async def forward(request: web.Request) -> web.StreamResponse:
    trace, continued = frontend_span(request.headers.getall(TRACEPARENT, []))
    request[TRACE] = trace
    host, target = request_host_and_target(request)
    headers = upstream_headers(
        request.headers,
        client=request.remote,
        host=request.headers.get("Host", host),
        traceparent=trace.header,
        keep_tracestate=continued,
        agent_credential=request.app[DEPS].credentials.agent,
    )
    return await request.app[FORWARDER].forward(request, host, target, headers, trace)


def request_host_and_target(request: web.Request) -> tuple[str, str]:
    """The normalized hostname and the raw path with query to send upstream."""
    raw = request.raw_path
    if raw.startswith("/"):
        host = normalize_host(request.headers.get("Host"))
        if host is None:
            raise InvalidRequest("missing Host header: it selects the function")
        return host, raw
    if raw.startswith(("http://", "https://")):  # absolute-form: its authority is the host
        url = URL(raw, encoded=True)
        host = normalize_host(url.raw_authority)
        if host is not None:
            return host, url.raw_path_qs
    raise InvalidRequest(f"unsupported request target {raw[:100]!r}")


def _unsupported_target(request: web.Request, exc: web.HTTPException) -> BismuthError | None:
    if exc.status == 404:  # only the router raises it: the target is not a /path
        return InvalidRequest(f"unsupported request target {request.raw_path!r}")
    return None


def _observe(request: web.Request, response: web.StreamResponse) -> None:
    """Trace header on the frontend's own answers; every answer counted by status class."""
    trace = request.get(TRACE)
    if trace is not None and not response.prepared:
        response.headers[TRACEPARENT] = trace.header
    request.app[DEPS].metrics.count_response(response.status)


# --- admin app --------------------------------------------------------------------------


def create_admin_app(deps: FrontendDeps) -> web.Application:
    app = web.Application()
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/timeline", timeline)
    return app


async def timeline(request: web.Request) -> web.Response:
    """When each recent backend became routable here (:mod:`bismuth_fe.timeline`)."""
    return web.json_response(request.app[DEPS].cache.routed.as_json())


async def healthz(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    table = deps.cache.table
    return web.json_response(
        {
            "status": "ok",
            "zookeeper_connected": deps.zk.connected,
            "zookeeper_env": deps.zk.env,
            "routes": len(table.routes),
            "serving_backends": table.serving_backends,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DEPS].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
