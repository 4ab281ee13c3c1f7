"""``bismuthd``'s HTTP server on the node's address (DESIGN §4, agent HTTP).

``/invoke/<cid>[/<path>]`` (any method): a ``Server`` container gets the request proxied to
its port, streamed both ways; an ``Executable`` one runs its program once per request, body
on stdin, stdout as the answer. A container this agent does not run, or that is not
``Running``, gets ``503`` with ``X-Bismuth-Not-Forwarded: 1``: nothing reached it, so the
frontend may safely try another backend. ``/logs/<cid>[?follow=true]`` serves the
container's output (Server-Sent Events when following, ending when the container goes
away). ``/healthz`` and ``/metrics`` describe the agent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from bismuth_core.httpheaders import CONTAINER_ID, NOT_FORWARDED, end_to_end
from bismuth_core.weberrors import error_middleware

from .logstore import LogStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ExecTimeout(Exception):
    """The program did not finish within the timeout (it has been killed)."""


class Invocable(Protocol):
    """A container as the HTTP server sees it."""

    container_id: uuid.UUID

    def serving(self) -> bool:
        """True while its status is Running."""
        ...

    def server_address(self) -> tuple[str, int] | None:
        """(ip, port) of a Server container; None for an Executable one."""
        ...

    async def execute(self, stdin: bytes, timeout: float) -> ExecResult:
        """Run the Executable program once (raises :class:`ExecTimeout`)."""
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


@dataclass
class HttpDeps:
    directory: ContainerDirectory
    logs: LogStore
    metrics: AgentMetrics
    exec_timeout: float = 30.0
    exec_concurrency: int = 8
    max_exec_body: int = 10 << 20
    refresh_metrics: Callable[[], Awaitable[None]] | None = None


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
    url = URL.build(
        scheme="http",
        host=address[0],
        port=address[1],
        path="/" + request.match_info.get("path", ""),
        query_string=request.query_string,
    )
    headers = end_to_end(request.headers)
    body = request.content if request.body_exists else None
    try:
        upstream = await request.app[HTTP].request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
    except (ClientError, TimeoutError) as exc:
        deps.metrics.invocations.labels("server", "unreachable").inc()
        return _json_error(502, f"container {cid} did not answer: {exc!r}")
    async with upstream:
        out = end_to_end(upstream.headers)
        out[CONTAINER_ID] = str(cid)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    deps.metrics.invocations.labels("server", str(upstream.status // 100) + "xx").inc()
    return response


async def _execute(request: web.Request, target: Invocable) -> web.StreamResponse:
    deps = request.app[DEPS]
    stdin = await _read_limited(request, deps.max_exec_body)
    if stdin is None:
        return _json_error(413, f"request body over {deps.max_exec_body} bytes")
    slots: dict[uuid.UUID, asyncio.Semaphore] = request.app[SLOTS]
    slot = slots.setdefault(target.container_id, asyncio.Semaphore(deps.exec_concurrency))
    try:
        await asyncio.wait_for(slot.acquire(), deps.exec_timeout)
    except TimeoutError:
        deps.metrics.invocations.labels("executable", "busy").inc()
        return _json_error(503, f"all {deps.exec_concurrency} runs of the program are busy")
    try:
        result = await target.execute(stdin, deps.exec_timeout)
    except ExecTimeout:
        deps.metrics.invocations.labels("executable", "timeout").inc()
        return _json_error(504, f"program did not finish within {deps.exec_timeout:g}s")
    finally:
        slot.release()
    headers = {CONTAINER_ID: str(target.container_id), "X-Bismuth-Exit-Code": str(result.exit_code)}
    if result.exit_code != 0:
        deps.metrics.invocations.labels("executable", "failed").inc()
        return web.json_response(
            {
                "error": f"program exited with status {result.exit_code}",
                "stderr": result.stderr[-4096:].decode(errors="replace"),
            },
            status=502,
            headers=headers,
        )
    deps.metrics.invocations.labels("executable", "ok").inc()
    return web.Response(
        body=result.stdout, headers=headers, content_type="application/octet-stream"
    )


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = ClientSession(
        timeout=ClientTimeout(total=None, connect=2.0, sock_read=None),
        auto_decompress=False,
    )
    app[SLOTS] = {}
    yield
    await app[HTTP].close()


def create_app(deps: HttpDeps) -> web.Application:
    app = web.Application(middlewares=[error_middleware()], client_max_size=deps.max_exec_body)
    app[DEPS] = deps
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/invoke/{cid}", invoke)
    app.router.add_route("*", "/invoke/{cid}/{path:.*}", invoke)
    app.router.add_get("/logs/{cid}", logs)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
