"""Forwarding one request to the agent of a running container, and streaming the answer back.

Each attempt picks the least loaded eligible backend not yet tried and sends the request to
``http://<node>:<agent_port>/invoke/<cid><path>?<query>``. When the agent cannot be reached
(connection refused, connect timeout) or answers ``503`` with ``X-Bismuth-Not-Forwarded: 1``,
the next backend is tried, up to ``retries`` more, but only while no byte of the request
body has been read: a body is streamed, never buffered, so it cannot be sent twice. A
connection reset before the response is retried too, for idempotent methods only: the
request may have reached the container already. Bodies go through in both directions chunk
by chunk; a small response that arrived whole with its head is answered in one write.

Failures map to: 502 no backend could be reached, 504 no response head within
``request_timeout``, 413 body over ``max_body_size``. Once the response has started, a
failure can only abort the client's connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientOSError,
    ClientResponse,
    ClientSession,
    ConnectionTimeoutError,
    ServerDisconnectedError,
    StreamReader,
    web,
)
from multidict import CIMultiDict
from yarl import URL

from bismuth_core.errors import BismuthError, InvalidRequest, NotFound, TooLarge, Unavailable
from bismuth_core.layout import Backend

from .balance import OutstandingRequests, choose_backend
from .cache import RouteCache
from .config import FrontendConfig
from .headers import NOT_FORWARDED, downstream_headers
from .metrics import FrontendMetrics
from .tracing import TraceContext

log = logging.getLogger(__name__)

# RFC 9110 §9.2.2: a request that may be sent twice after a connection reset.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# Headers aiohttp's client would add on its own; the client's (or none) go upstream instead.
SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "Content-Type", "User-Agent"})


class UpstreamUnreachable(BismuthError):
    """No backend could be reached, or the agent's answer was not valid HTTP."""

    status = 502


class UpstreamTimeout(BismuthError):
    status = 504


class BodyTooLarge(Exception):
    """Raised inside the body stream to stop sending a body that went over the limit."""


class RequestBody:
    """The client's body, read chunk by chunk as an upstream attempt sends it."""

    def __init__(self, content: StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.consumed = 0
        self.too_large = False
        self.read_error: Exception | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._content.readany()
            except Exception as exc:  # the client went away or sent a broken body
                self.read_error = exc
                raise
            if not chunk:
                return
            self.consumed += len(chunk)
            if self.consumed > self._limit:
                self.too_large = True
                raise BodyTooLarge(f"request body exceeds {self._limit} bytes")
            yield chunk


class Forwarder:
    """Sends requests to backends; one per app, sharing its client session."""

    def __init__(
        self,
        session: ClientSession,
        cache: RouteCache,
        load: OutstandingRequests,
        metrics: FrontendMetrics,
        config: FrontendConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._cache = cache
        self._load = load
        self._metrics = metrics
        self._config = config
        self._rng = rng or random.Random()

    async def forward(
        self,
        request: web.Request,
        host: str,
        target: str,
        headers: CIMultiDict[str],
        trace: TraceContext,
    ) -> web.StreamResponse:
        """Answer ``request`` (for ``host``, path and query ``target``) from a backend."""
        self._cache.table.lookup(host)  # 404 / 503 before anything else
        self._check_length(request)
        body = RequestBody(request.content, self._config.max_body_size)
        tried: list[Backend] = []
        failures: list[str] = []
        for attempt in range(self._config.retries + 1):
            backend = self._next_backend(host, tried)
            if backend is None:
                break
            if attempt:
                self._metrics.retries.inc()
            tried.append(backend)
            outcome = await self._attempt(request, backend, target, headers, body, trace)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            failures.append(f"{backend.ip}: {outcome}")
            log.warning(
                "backend unreachable: %s",
                outcome,
                extra={"hostname": host, "node": backend.ip, "container_id": backend.container_id},
            )
        raise UpstreamUnreachable(
            f"no backend could be reached for host {host!r} "
            f"(tried {len(tried)}: {'; '.join(failures)})"
        )

    def _check_length(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self._config.max_body_size:
            raise TooLarge(
                f"request body of {length} bytes exceeds the limit of "
                f"{self._config.max_body_size} bytes"
            )

    def _next_backend(self, host: str, tried: list[Backend]) -> Backend | None:
        try:
            route = self._cache.table.lookup(host)  # the table may have changed meanwhile
        except (NotFound, Unavailable):
            return None
        return choose_backend(route.backends, self._load.counts, tried, self._rng)

    async def _attempt(
        self,
        request: web.Request,
        backend: Backend,
        target: str,
        headers: CIMultiDict[str],
        body: RequestBody,
        trace: TraceContext,
    ) -> web.StreamResponse | str:
        """The response, or why this backend could not take the request (then retry)."""
        url = URL(
            f"http://{backend.ip}:{self._config.agent_port}/invoke/{backend.container_id}{target}",
            encoded=True,
        )
        with self._load.hold(backend.container_id):
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._config.request_timeout):
                    upstream = await self._session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=body.chunks() if request.body_exists else None,
                        allow_redirects=False,
                        skip_auto_headers=SKIP_AUTO_HEADERS,
                    )
            except (ClientError, TimeoutError) as exc:
                return self._unreached(exc, request.method, backend, body)
            self._metrics.upstream_latency.observe(time.monotonic() - started)
            try:
                if upstream.status == 503 and upstream.headers.get(NOT_FORWARDED) == "1":
                    upstream.close()  # stops the body writer before it reads anything more
                    if body.consumed == 0:
                        return "the agent did not forward the request (container unknown)"
                    raise UpstreamUnreachable(
                        "the agent did not forward the request and its body was partly sent"
                    )
                return await self._relay(request, upstream, backend, trace)
            finally:
                upstream.release()

    def _unreached(
        self, exc: BaseException, method: str, backend: Backend, body: RequestBody
    ) -> str:
        """Why an attempt failed before a response head, if another backend may be tried.

        Raises when the request must not be retried.
        """
        if body.too_large:
            raise TooLarge(f"request body exceeds the limit of {self._config.max_body_size} bytes")
        if body.read_error is not None:
            raise InvalidRequest(f"request body could not be read: {body.read_error}")
        if isinstance(exc, ConnectionTimeoutError):
            return f"connect timed out after {self._config.connect_timeout}s"
        if isinstance(exc, ClientConnectorError):
            return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(
                f"container {backend.container_id} did not answer within "
                f"{self._config.request_timeout:g}s"
            ) from exc
        if (
            isinstance(exc, (ServerDisconnectedError, ClientOSError))
            and body.consumed == 0
            and method in IDEMPOTENT_METHODS
        ):
            # the request may have reached the container: only resend what is safe to repeat
            return f"connection lost before a response ({type(exc).__name__})"
        raise UpstreamUnreachable(
            f"request to container {backend.container_id} failed: {type(exc).__name__}: {exc}"
        ) from exc

    async def _relay(
        self,
        request: web.Request,
        upstream: ClientResponse,
        backend: Backend,
        trace: TraceContext,
    ) -> web.StreamResponse:
        headers = downstream_headers(
            upstream.headers, container_id=str(backend.container_id), traceparent=trace.header
        )
        if upstream.content.is_eof() and _may_have_body(request.method, upstream.status):
            # The whole body came in with the head (a small response): nothing to wait
            # for, so answer with one write instead of headers and body separately.
            body = await upstream.read()
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (ClientError, OSError) as exc:
            # the response has started: all that is left is to abort the client's connection
            log.warning(
                "response aborted: %s: %s",
                type(exc).__name__,
                exc,
                extra={"node": backend.ip, "container_id": backend.container_id},
            )
            request.protocol.force_close()
            return response
        await response.write_eof()
        return response


def _may_have_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)
