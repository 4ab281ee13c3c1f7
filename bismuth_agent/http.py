"""``bismuthd``'s HTTP server on the node's address (DESIGN §4, agent HTTP).

``/invoke/<cid>[/<path>]`` (any method): a ``Server`` container gets the request proxied to
its port, streamed both ways; an ``Executable`` one runs its program once per request, body
on stdin, stdout as the answer. A container this agent does not run, or that is not
``Running``, gets ``503`` with ``X-Bismuth-Not-Forwarded: 1``: nothing reached it, so the
frontend may safely try another backend. ``/logs/<cid>[?follow=true]`` serves the
container's output (Server-Sent Events when following, ending when the container goes
away). ``/healthz`` and ``/metrics`` describe the agent; ``/timeline`` gives the stage stamps
of its recent container starts (:mod:`bismuth_agent.timeline`).

One tenant cannot exhaust the agent (:class:`InvokeLimits`): an Executable request waits for
one of its container's ``exec_concurrency`` slots *before* its body is read; the body then
streams into the program's stdin (never held whole) and may hold at most ``exec_max_body``
bytes (``413``); a run, body included, lasts at most ``exec_timeout`` (``504``, or ``408``
while the body was still coming); a program whose stdout passes ``exec_max_output`` bytes is
killed and answered ``502``; the Server-mode proxy
is bounded by :mod:`bismuth_agent.proxy`. A client that goes away cancels its handler (and
with it the run or the upstream request).

Only the cluster's own daemons may invoke containers, read their logs, the metrics or the
timelines (which name containers): those routes need the cluster's agent credential in
``X-Bismuth-Agent-Credential`` (for ``/metrics`` also as ``Authorization: Bearer``, as
Prometheus sends it); anything else is a ``401``. The header never reaches a container.
``/healthz`` stays open: it names no container.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import ClientSession, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bismuth_core import tokens
from bismuth_core.credentials import AGENT_HEADER, FrontendCredentials
from bismuth_core.errors import Unauthorized
from bismuth_core.httpheaders import CONTAINER_ID, NOT_FORWARDED
from bismuth_core.weberrors import error_middleware

from .config import AgentConfig
from .logstore import LogStore
from .model import ExecOutputTooLarge, ExecResult, ExecTimeout
from .proxy import ProxyLimits, Refused, proxy, proxy_session
from .timeline import Timelines

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Invocable(Protocol):
    """A container as the HTTP server sees it."""

    container_id: uuid.UUID

    def serving(self) -> bool:
        """True while its status is Running."""
        ...

    def server_address(self) -> tuple[str, int] | None:
        """(ip, port) of a Server container; None for an Executable one."""
        ...

    async def execute(
        self, stdin: AsyncIterable[bytes], timeout: float, max_output: int
    ) -> ExecResult:
        """Run the Executable program once, ``stdin`` fed as it comes (raises
        :class:`ExecTimeout`, :class:`ExecOutputTooLarge`, and what ``stdin`` raises)."""
        ...


class ContainerDirectory(Protocol):
    def lookup(self, cid: uuid.UUID) -> Invocable | None: ...

    def known(self, cid: uuid.UUID) -> bool:
        """True while the container is desired on this node (its logs may grow)."""
        ...

    def health(self) -> dict[str, object]: ...


@dataclass
class AgentMetrics:
    registry: CollectorRegistry
    invocations: Counter
    containers: Gauge
    start_latency: Histogram
    cpu_seconds: Gauge
    memory_bytes: Gauge

    @classmethod
    def create(cls) -> AgentMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            invocations=Counter(
                "bismuth_agent_invocations",
                "Invocations by mode and result",
                ["mode", "result"],
                registry=r,
            ),
            containers=Gauge(
                "bismuth_agent_containers", "Containers by status", ["status"], registry=r
            ),
            start_latency=Histogram(
                "bismuth_agent_start_seconds",
                "Container znode seen to Running",
                buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
                registry=r,
            ),
            cpu_seconds=Gauge(
                "bismuth_agent_container_cpu_seconds",
                "CPU time used by a container",
                ["container_id"],
                registry=r,
            ),
            memory_bytes=Gauge(
                "bismuth_agent_container_memory_bytes",
                "Memory used by a container",
                ["container_id"],
                registry=r,
            ),
        )


@dataclass(frozen=True)
class InvokeLimits:
    """What one ``/invoke`` may cost the agent (the agent settings of the same names)."""

    exec_timeout: float = 30.0
    exec_concurrency: int = 8  # runs at once per container
    exec_max_body: int = 10 << 20
    exec_max_output: int = 6 << 20  # stdout bytes of one run
    proxy: ProxyLimits = field(default_factory=ProxyLimits)

    @classmethod
    def from_config(cls, config: AgentConfig) -> InvokeLimits:
        return cls(
            exec_timeout=config.exec_timeout,
            exec_concurrency=config.exec_concurrency,
            exec_max_body=config.exec_max_body,
            exec_max_output=config.exec_max_output,
            proxy=ProxyLimits(
                config.proxy_connect_timeout,
                config.proxy_idle_timeout,
                config.proxy_max_connections,
            ),
        )


@dataclass
class HttpDeps:
    directory: ContainerDirectory
    logs: LogStore
    metrics: AgentMetrics
    credentials: FrontendCredentials  # the cluster's agent credential, to check callers
    limits: InvokeLimits = field(default_factory=InvokeLimits)
    refresh_metrics: Callable[[], Awaitable[None]] | None = None
    timelines: Timelines = field(default_factory=Timelines)


READ_BUFSIZE = 16 << 10
DEPS = web.AppKey("deps", HttpDeps)
HTTP = web.AppKey("http", ClientSession)
SLOTS = web.AppKey("slots", dict)


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _not_forwarded(message: str) -> web.Response:
    return _json_error(503, message, **{NOT_FORWARDED: "1"})


async def invoke(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    cid = _container_id(request)
    target = deps.directory.lookup(cid) if cid else None
    if target is None or not target.serving():
        return _not_forwarded(f"container {request.match_info['cid']} is not running here")
    address = target.server_address()
    if address is not None:
        return await _proxy(request, target.container_id, address)
    return await _execute(request, target)


def _container_id(request: web.Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.match_info["cid"])
    except ValueError:
        return None


async def _proxy(
    request: web.Request, cid: uuid.UUID, address: tuple[str, int]
) -> web.StreamResponse:
    deps = request.app[DEPS]
    try:
        response = await proxy(request, request.app[HTTP], deps.limits.proxy, cid, address)
    except Refused as refused:
        result = "unreachable" if not refused.forwarded else f"{refused.status}"
        deps.metrics.invocations.labels("server", result).inc()
        return refused.response()
    deps.metrics.invocations.labels("server", str(response.status // 100) + "xx").inc()
    return response


async def _execute(request: web.Request, target: Invocable) -> web.StreamResponse:
    deps, limits = request.app[DEPS], request.app[DEPS].limits
    declared = request.content_length
    if declared is not None and declared > limits.exec_max_body:
        return _json_error(413, f"request body over {limits.exec_max_body} bytes")
    slots: dict[uuid.UUID, asyncio.Semaphore] = request.app[SLOTS]
    slot = slots.setdefault(target.container_id, asyncio.Semaphore(limits.exec_concurrency))
    try:
        await asyncio.wait_for(slot.acquire(), limits.exec_timeout)
    except TimeoutError:
        deps.metrics.invocations.labels("executable", "busy").inc()
        return _json_error(503, f"all {limits.exec_concurrency} runs of the program are busy")
    try:  # the slot is held from here: a body is read only by the run that consumes it
        return await _run(request, target, limits)
    finally:
        slot.release()


async def _run(request: web.Request, target: Invocable, limits: InvokeLimits) -> web.Response:
    metrics = request.app[DEPS].metrics
    body = RequestBody(request, limits.exec_max_body)
    try:
        result = await target.execute(body.chunks(), limits.exec_timeout, limits.exec_max_output)
    except ExecTimeout:
        if not body.complete:
            return _json_error(408, f"request body not received within {limits.exec_timeout:g}s")
        metrics.invocations.labels("executable", "timeout").inc()
        return _json_error(504, f"program did not finish within {limits.exec_timeout:g}s")
    except BodyTooLarge:
        return _json_error(413, f"request body over {limits.exec_max_body} bytes")
    except ExecOutputTooLarge:
        metrics.invocations.labels("executable", "too_large").inc()
        why = f"program wrote more than {limits.exec_max_output} bytes (exec_max_output)"
        return _json_error(502, f"{why}; it was stopped")
    headers = {CONTAINER_ID: str(target.container_id), "X-Bismuth-Exit-Code": str(result.exit_code)}
    if result.exit_code != 0:
        metrics.invocations.labels("executable", "failed").inc()
        return web.json_response(
            {
                "error": f"program exited with status {result.exit_code}",
                "stderr": result.stderr[-4096:].decode(errors="replace"),
            },
            status=502,
            headers=headers,
        )
    metrics.invocations.labels("executable", "ok").inc()
    return web.Response(
        body=result.stdout, headers=headers, content_type="application/octet-stream"
    )


class BodyTooLarge(Exception):
    """The request body passed the limit while the program was reading it."""


class RequestBody:
    """A request's body as the program reads it: chunk by chunk, never whole in memory."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self.request, self.limit = request, limit
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.request.content.iter_any():
            size += len(chunk)
            if size > self.limit:
                raise BodyTooLarge()
            yield chunk
        self.complete = True


async def logs(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    cid = _container_id(request)
    if cid is None or not (deps.directory.known(cid) or deps.logs.path(cid).exists()):
        return _json_error(404, f"no container {request.match_info['cid']} on this node")
    if request.query.get("follow", "").lower() not in ("1", "true", "yes"):
        return web.Response(body=deps.logs.read(cid), content_type="text/plain", charset="utf-8")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    async for line in deps.logs.follow(cid, lambda: deps.directory.known(cid)):
        await response.write(f"data: {line}\n\n".encode())
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, **request.app[DEPS].directory.health()})


async def metrics(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    if deps.refresh_metrics is not None:
        await deps.refresh_metrics()
    return web.Response(
        body=generate_latest(deps.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def timeline(request: web.Request) -> web.Response:
    """Stage stamps of recent container starts (:mod:`.timeline`); ``?container=<cid>``
    narrows to one (404 if it has none)."""
    timelines = request.app[DEPS].timelines
    wanted = request.query.get("container")
    if wanted is None:
        return web.json_response(timelines.all())
    try:
        line = timelines.get(uuid.UUID(wanted))
    except ValueError:
        return _json_error(400, f"container {wanted!r} is not a UUID")
    if line is None:
        return _json_error(404, f"no timeline of container {wanted} on this node")
    return web.json_response({wanted: line})


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = proxy_session(app[DEPS].limits.proxy)
    app[SLOTS] = {}
    yield
    await app[HTTP].close()


PROTECTED = ("/invoke/", "/logs/", "/metrics", "/timeline")


def presented_credential(request: web.Request) -> str | None:
    """The agent credential a caller sent (``Authorization: Bearer`` counts on /metrics)."""
    found = request.headers.get(AGENT_HEADER)
    if found is None and request.path == "/metrics":
        found = tokens.bearer(request.headers.get("Authorization"))
    return found


@web.middleware
async def require_credential(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 on the protected routes unless the cluster's agent credential came along."""
    credentials = request.app[DEPS].credentials
    if request.path.startswith(PROTECTED) and not credentials.is_agent_credential(
        presented_credential(request)
    ):
        raise Unauthorized(
            f"{AGENT_HEADER} missing or wrong: only the cluster's frontends and API may "
            "call this agent",
            realm="bismuth-agent",
        )
    return await handler(request)


def create_app(deps: HttpDeps) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware(), require_credential],
        client_max_size=deps.limits.exec_max_body,
        handler_args={
            "handler_cancellation": True,  # a client that leaves cancels its run
            # A request waiting for a run slot has its body read this far ahead only: 300
            # waiting 9 MB bodies cost the agent ~25 MB instead of ~200 MB.
            "read_bufsize": READ_BUFSIZE,
        },
    )
    app[DEPS] = deps
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/invoke/{cid}", invoke)
    app.router.add_route("*", "/invoke/{cid}/{path:.*}", invoke)
    app.router.add_get("/logs/{cid}", logs)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/timeline", timeline)
    return app
