"""The ``bismuth-api`` aiohttp application: thin handlers over its services.

:class:`FunctionService` handles functions, :class:`SecretService` their secrets,
:class:`GroupService` tenants' service groups, :class:`StatusService` the status page's
``GET /status`` (the page itself: :mod:`bismuth_api.webui`). Every route but ``/healthz``,
``/openapi.json`` and the page's static files needs a token (:mod:`bismuth_api.auth`); the
caller it names is passed to the services, which show each tenant only its own things.

One middleware maps every :class:`BismuthError` (and aiohttp's own HTTP errors) to a JSON
body ``{"error": ...}`` with its status; nothing a client sends produces a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bismuth_core import jsondoc
from bismuth_core.credentials import ClusterCredentials, writer_access
from bismuth_core.errors import BismuthError, InvalidRequest, TooLarge
from bismuth_core.fleet import FleetCache
from bismuth_core.secrets import (
    MAX_SECRET_SIZE,
    SecretBox,
    validate_secret_name,
    validate_secret_value,
)
from bismuth_core.weberrors import error_middleware
from bismuth_core.zk import ZooKeeper

from . import logs, webui
from .auth import CALLER, TokenCache, auth_middleware, require_admin
from .config import ApiConfig
from .leader import Leader
from .openapi import openapi_document
from .service import (
    FunctionService,
    SecretService,
    cluster_key,
    parse_function_id,
    parse_uuid_segment,
)
from .status import StatusService
from .tenants import GroupService

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# finer than prometheus_client's default between 0.1 and 0.5 s, where a loaded API's tail is,
# and down to the millisecond, where ZooKeeper answers
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5, 10)


@dataclass
class ApiMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    leader: Gauge
    zookeeper: Gauge
    commit_seconds: Histogram
    commit_callers: Histogram

    @classmethod
    def create(cls) -> ApiMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "bismuth_api_requests",
                "API requests by route and status",
                ["route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "bismuth_api_request_seconds",
                "API request latency",
                ["route"],
                registry=registry,
                buckets=BUCKETS,
            ),
            leader=Gauge("bismuth_api_leader", "1 while this replica leads", registry=registry),
            zookeeper=Gauge(
                "bismuth_api_zookeeper_connected",
                "1 while connected to ZooKeeper",
                registry=registry,
            ),
            commit_seconds=Histogram(
                "bismuth_api_placement_commit_seconds",
                "Placements' multi-ops: from sending one to ZooKeeper's answer",
                registry=registry,
                buckets=BUCKETS,
            ),
            commit_callers=Histogram(
                "bismuth_api_placement_commit_callers",
                "Placements' multi-ops: how many placements one carried (group commit)",
                registry=registry,
                buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            ),
        )

    def observe_commit(self, callers: int, seconds: float) -> None:
        self.commit_callers.observe(callers)
        self.commit_seconds.observe(seconds)


@dataclass
class ApiDeps:
    config: ApiConfig
    zk: ZooKeeper
    service: FunctionService
    fleet: FleetCache
    leader: Leader | None
    metrics: ApiMetrics
    secrets: SecretService
    tokens: TokenCache
    groups: GroupService
    status: StatusService
    credentials: ClusterCredentials  # presented to the agents (logs)


DEPS = web.AppKey("deps", ApiDeps)
HTTP = web.AppKey("http", ClientSession)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency and count of every answer, by route (errors included: it wraps the errors)."""
    deps = request.app[DEPS]
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    with deps.metrics.latency.labels(route).time():
        response = await handler(request)
    deps.metrics.requests.labels(route, str(response.status)).inc()
    return response


def _too_large(request: web.Request, exc: web.HTTPException) -> BismuthError | None:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return TooLarge(f"request body over {request.app[DEPS].config.max_body_size} bytes")
    return None


def _tenant(request: web.Request) -> str | None:
    """The ``tenant`` query parameter: the tenant an admin acts for (id or name)."""
    return request.query.get("tenant")


async def _json_body(request: web.Request, required: bool = True) -> object | None:
    body = await request.read()
    if not body.strip():
        if required:
            raise InvalidRequest("request body must be a JSON function definition")
        return None
    return jsondoc.loads(body, "request body")


async def create_function(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    raw = await _json_body(request)
    fid = await service.create(request[CALLER], raw, _tenant(request))
    return web.json_response({"id": str(fid)})


async def list_functions(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    return web.json_response(await service.list(request[CALLER], _tenant(request)))


async def get_function(request: web.Request) -> web.Response:
    fid = parse_function_id(request.match_info["id"])
    return web.json_response(await request.app[DEPS].service.get(request[CALLER], fid))


async def update_function(request: web.Request) -> web.Response:
    fid = parse_function_id(request.match_info["id"])
    raw = await _json_body(request, required=False)
    return web.json_response(await request.app[DEPS].service.update(request[CALLER], fid, raw))


async def delete_function(request: web.Request) -> web.Response:
    fid = parse_function_id(request.match_info["id"])
    await request.app[DEPS].service.delete(request[CALLER], fid)
    return web.json_response({"id": str(fid), "deleted": True})


async def function_logs(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    fid = parse_function_id(request.match_info["id"])
    backends = await deps.service.backends(request[CALLER], fid)
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    agent = logs.Agents(request.app[HTTP], deps.config.agent_port, deps.credentials.agent)
    return await logs.respond(request, agent, backends, follow)


async def _secret_value(request: web.Request) -> bytes:
    """The raw request body (any content type), refused early when it is declared too big."""
    declared = request.content_length
    if declared is not None and declared > MAX_SECRET_SIZE:
        raise TooLarge(f"secret value is {declared} bytes; the limit is {MAX_SECRET_SIZE} bytes")
    return validate_secret_value(await request.read())


async def put_secret(request: web.Request) -> web.Response:
    secrets = request.app[DEPS].secrets
    fid = parse_function_id(request.match_info["id"])
    name = validate_secret_name(request.match_info["name"])
    await secrets.set(request[CALLER], fid, name, await _secret_value(request))
    return web.Response(status=204)


async def list_secrets(request: web.Request) -> web.Response:
    fid = parse_function_id(request.match_info["id"])
    names = await request.app[DEPS].secrets.names(request[CALLER], fid)
    return web.json_response({"secrets": names})


async def delete_secret(request: web.Request) -> web.Response:
    fid = parse_function_id(request.match_info["id"])
    name = validate_secret_name(request.match_info["name"])
    await request.app[DEPS].secrets.delete(request[CALLER], fid, name)
    return web.Response(status=204)


async def create_group(request: web.Request) -> web.Response:
    gid = await request.app[DEPS].groups.create(request[CALLER], _tenant(request))
    return web.json_response({"id": str(gid)})


async def list_groups(request: web.Request) -> web.Response:
    groups = request.app[DEPS].groups
    return web.json_response(await groups.list(request[CALLER], _tenant(request)))


async def delete_group(request: web.Request) -> web.Response:
    gid = parse_uuid_segment(request.match_info["id"], "group id")
    await request.app[DEPS].groups.delete(request[CALLER], gid)
    return web.json_response({"id": str(gid), "deleted": True})


async def status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DEPS].status.snapshot(request[CALLER]))


async def healthz(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    return web.json_response(
        {
            "ok": True,
            "zookeeper": deps.zk.connected,
            "leader": bool(deps.leader and deps.leader.is_leader),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    require_admin(request[CALLER], "metrics")
    deps.metrics.zookeeper.set(1 if deps.zk.connected else 0)
    deps.metrics.leader.set(1 if deps.leader and deps.leader.is_leader else 0)
    body = generate_latest(deps.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = ClientSession(timeout=ClientTimeout(connect=2.0, sock_read=None))
    yield
    await app[HTTP].close()


async def _fleet_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[DEPS].fleet.start()
    yield


async def _tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[DEPS].tokens.start()
    yield
    app[DEPS].tokens.close()


async def _leader_ctx(app: web.Application) -> AsyncIterator[None]:
    leader = app[DEPS].leader
    task = asyncio.create_task(leader.run()) if leader else None
    yield
    if leader and task:
        await leader.stop()
        await task


def create_app(deps: ApiDeps) -> web.Application:
    app = web.Application(
        middlewares=[
            metrics_middleware,
            error_middleware(translate=_too_large),
            auth_middleware(lambda request: request.app[DEPS].tokens),
        ],
        client_max_size=deps.config.max_body_size,
    )
    app[DEPS] = deps
    app.cleanup_ctx.append(_http_session)
    app.cleanup_ctx.append(_tokens_ctx)
    app.cleanup_ctx.append(_fleet_ctx)
    app.cleanup_ctx.append(_leader_ctx)
    app.router.add_post("/function", create_function)
    app.router.add_get("/function", list_functions)
    app.router.add_get("/function/{id}", get_function)
    app.router.add_put("/function/{id}", update_function)
    app.router.add_delete("/function/{id}", delete_function)
    app.router.add_get("/function/{id}/logs", function_logs)
    app.router.add_get("/function/{id}/secrets", list_secrets)
    app.router.add_put("/function/{id}/secrets/{name}", put_secret)
    app.router.add_delete("/function/{id}/secrets/{name}", delete_secret)
    app.router.add_post("/group", create_group)
    app.router.add_get("/group", list_groups)
    app.router.add_delete("/group/{id}", delete_group)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/status", status)
    webui.add_routes(app.router)
    return app


def connect(config: ApiConfig, **session: Any) -> ZooKeeper:
    """The API's ZooKeeper session, with the cluster's access (from the cluster key).

    :class:`ConfigError` if the cluster key is missing or unusable.
    """
    credentials = ClusterCredentials.from_cluster_key(cluster_key(config))
    session = {"session_timeout": config.zookeeper_session_timeout, **session}
    return ZooKeeper(
        config.zookeeper, config.zookeeper_env, access=writer_access(credentials), **session
    )


def build_deps(config: ApiConfig, zk: ZooKeeper, with_leader: bool = True) -> ApiDeps:
    """The API's parts; :class:`ConfigError` if the cluster key is missing or unusable."""
    key = cluster_key(config)
    secrets = SecretService(zk, SecretBox(key), config.max_secrets)
    metrics = ApiMetrics.create()
    fleet = FleetCache(zk, observe=metrics.observe_commit)
    leader = (
        Leader(
            zk,
            grace=config.node_loss_grace,
            interval=config.leader_interval,
            nodes=fleet,
        )
        if with_leader
        else None
    )
    service = FunctionService(zk, config, fleet)
    groups = GroupService(zk, service.scope)
    return ApiDeps(
        config,
        zk,
        service,
        fleet,
        leader,
        metrics,
        secrets,
        TokenCache(zk),
        groups,
        StatusService(zk, service),
        ClusterCredentials.from_cluster_key(key),
    )
