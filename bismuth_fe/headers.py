"""Headers between client and agent: hop-by-hop removal and ``X-Forwarded-*``.

Hop-by-hop headers (RFC 9110 §7.6.1: ``Connection``, ``Keep-Alive``, ``Proxy-Authenticate``,
``Proxy-Authorization``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, the legacy
``Proxy-Connection``, and every header named in ``Connection``) describe one connection and
are dropped in both directions. Everything else passes through, repeated headers included.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

CONTAINER_ID = "X-Bismuth-Container-ID"
NOT_FORWARDED = "X-Bismuth-Not-Forwarded"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def hop_by_hop_names(headers: Headers) -> frozenset[str]:
    """The lowercase names not to forward: the fixed set plus those listed in Connection."""
    listed = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | listed


def end_to_end(headers: Headers, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop headers and without ``drop``."""
    skip = hop_by_hop_names(headers) | {name.lower() for name in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def upstream_headers(
    headers: Headers,
    *,
    client: str | None,
    host: str,
    traceparent: str,
    keep_tracestate: bool,
    proto: str = "http",
) -> CIMultiDict[str]:
    """Request headers for the agent.

    ``Host`` stays the original; ``X-Forwarded-For`` gets ``client`` appended;
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set; ``traceparent`` is replaced
    (and ``tracestate`` kept only when the incoming trace was continued).
    """
    # Expect: the frontend already answered 100-continue to the client itself.
    drop = {"expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", TRACEPARENT}
    if not keep_tracestate:
        drop.add(TRACESTATE)
    out = end_to_end(headers, drop)
    previous = [v.strip() for v in headers.getall("X-Forwarded-For", []) if v.strip()]
    out["X-Forwarded-For"] = ", ".join([*previous, client or "unknown"])
    out["X-Forwarded-Proto"] = proto
    out["X-Forwarded-Host"] = host
    out[TRACEPARENT] = traceparent
    return out


def downstream_headers(
    headers: Headers, *, container_id: str, traceparent: str
) -> CIMultiDict[str]:
    """Response headers for the client: the agent's, end-to-end only, plus ours."""
    out = end_to_end(headers, {CONTAINER_ID, TRACEPARENT, NOT_FORWARDED})
    out[CONTAINER_ID] = container_id
    out[TRACEPARENT] = traceparent
    return out
