"""The Server-mode path of ``/invoke``: a request proxied to the container's port, streamed.

Bounded so that one container cannot exhaust the agent:
- at most ``max_connections`` connections to one container at once (aiohttp's pool per
  host); a request that gets none within ``connect_timeout`` (pool wait plus TCP connect) is
  ``503`` with ``X-Bismuth-Not-Forwarded: 1``: nothing reached the container, the frontend
  may try another;
- ``idle_timeout``: a container that sends nothing for that long, before or during its
  answer, is cut off (``504`` if no answer had started);
- a client that goes away cancels its handler (the app runs with handler cancellation), and
  with it the upstream request and its connection.
``X-Bismuth-*`` headers a container sends are dropped: only the agent sets them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientTimeout,
    ConnectionTimeoutError,
    ServerTimeoutError,
    TCPConnector,
    web,
)
from multidict import CIMultiDict
from yarl import URL

from bismuth_core.credentials import AGENT_HEADER
from bismuth_core.httpheaders import CONTAINER_ID, NOT_FORWARDED, end_to_end

log = logging.getLogger(__name__)

BISMUTH_PREFIX = "x-bismuth-"


@dataclass(frozen=True)
class ProxyLimits:
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0
    max_connections: int = 64  # per container


def proxy_session(limits: ProxyLimits) -> ClientSession:
    return ClientSession(
        connector=TCPConnector(limit=0, limit_per_host=limits.max_connections),
        timeout=ClientTimeout(
            total=None,
            connect=limits.connect_timeout,
            sock_connect=limits.connect_timeout,
            sock_read=limits.idle_timeout,
        ),
        auto_decompress=False,
    )


class Refused(Exception):
    """The request did not reach the container; ``status`` and ``message`` say why."""

    def __init__(self, status: int, message: str, forwarded: bool) -> None:
        super().__init__(message)
        self.status, self.message, self.forwarded = status, message, forwarded

    def response(self) -> web.Response:
        headers = {} if self.forwarded else {NOT_FORWARDED: "1"}
        return web.json_response({"error": self.message}, status=self.status, headers=headers)


async def proxy(
    request: web.Request,
    session: ClientSession,
    limits: ProxyLimits,
    cid: uuid.UUID,
    address: tuple[str, int],
) -> web.StreamResponse:
    """Forward ``request`` to ``address``; stream the answer back (raises :class:`Refused`)."""
    url = URL.build(
        scheme="http",
        host=address[0],
        port=address[1],
        path="/" + request.match_info.get("path", ""),
        query_string=request.query_string,
    )
    try:
        upstream = await session.request(
            request.method,
            url,
            headers=end_to_end(request.headers, {AGENT_HEADER}),  # the caller's, not theirs
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
    except (ConnectionTimeoutError, ClientConnectorError) as exc:
        raise Refused(503, _no_connection(cid, limits, exc), forwarded=False) from None
    except ServerTimeoutError:
        why = f"container {cid} sent nothing for {limits.idle_timeout:g}s (proxy_idle_timeout)"
        raise Refused(504, why, forwarded=True) from None
    except (ClientError, TimeoutError) as exc:
        raise Refused(502, f"container {cid} did not answer: {exc!r}", forwarded=True) from None
    async with upstream:
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=_answer_headers(upstream, cid)
        )
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (ClientError, TimeoutError) as exc:
            # the answer has started: all that is left is to cut the client's connection
            log.warning("answer broke off: %r", exc, extra={"container_id": cid})
            request.protocol.force_close()
            return response
        await response.write_eof()
    return response


def _no_connection(cid: uuid.UUID, limits: ProxyLimits, exc: Exception) -> str:
    if isinstance(exc, ConnectionTimeoutError):
        return (
            f"no connection to container {cid} within {limits.connect_timeout:g}s "
            f"(proxy_connect_timeout; at most {limits.max_connections} at once)"
        )
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
    return f"container {cid} does not accept connections: {why}"


def _answer_headers(upstream: object, cid: uuid.UUID) -> CIMultiDict[str]:
    headers = end_to_end(upstream.headers)  # type: ignore[attr-defined]
    for name in [n for n in headers if n.lower().startswith(BISMUTH_PREFIX)]:
        headers.popall(name)
    headers[CONTAINER_ID] = str(cid)
    return headers
