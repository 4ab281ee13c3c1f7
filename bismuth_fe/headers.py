"""Headers between client and agent: hop-by-hop removal, ``X-Forwarded-*``, the credential.

Hop-by-hop headers are dropped in both directions (see :mod:`bismuth_core.httpheaders`).
Everything else passes through, repeated headers included, except the agent credential
header: a client's is dropped, and the frontend's own goes to the agent.
"""

from __future__ import annotations

from multidict import CIMultiDict

from bismuth_core.credentials import AGENT_HEADER
from bismuth_core.httpheaders import (
    CONTAINER_ID,
    NOT_FORWARDED,
    TRACEPARENT,
    TRACESTATE,
    Headers,
    end_to_end,
)

__all__ = [
    "CONTAINER_ID",
    "NOT_FORWARDED",
    "TRACEPARENT",
    "downstream_headers",
    "end_to_end",
    "upstream_headers",
]


def upstream_headers(
    headers: Headers,
    *,
    client: str | None,
    host: str,
    traceparent: str,
    keep_tracestate: bool,
    agent_credential: str,
    proto: str = "http",
) -> CIMultiDict[str]:
    """Request headers for the agent.

    ``Host`` stays the original; ``X-Forwarded-For`` gets ``client`` appended;
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set; ``traceparent`` is replaced
    (and ``tracestate`` kept only when the incoming trace was continued); the agent
    credential header is the frontend's own, never the client's.
    """
    # Expect: the frontend already answered 100-continue to the client itself.
    drop = {"expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", TRACEPARENT}
    drop.add(AGENT_HEADER)
    if not keep_tracestate:
        drop.add(TRACESTATE)
    out = end_to_end(headers, drop)
    previous = [v.strip() for v in headers.getall("X-Forwarded-For", []) if v.strip()]
    out["X-Forwarded-For"] = ", ".join([*previous, client or "unknown"])
    out["X-Forwarded-Proto"] = proto
    out["X-Forwarded-Host"] = host
    out[TRACEPARENT] = traceparent
    out[AGENT_HEADER] = agent_credential
    return out


def downstream_headers(
    headers: Headers, *, container_id: str, traceparent: str
) -> CIMultiDict[str]:
    """Response headers for the client: the agent's, end-to-end only, plus ours."""
    out = end_to_end(headers, {CONTAINER_ID, TRACEPARENT, NOT_FORWARDED})
    out[CONTAINER_ID] = container_id
    out[TRACEPARENT] = traceparent
    return out
