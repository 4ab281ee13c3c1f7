"""HTTP headers every Bismuth proxy treats alike: hop-by-hop removal and Bismuth's own names.

Hop-by-hop headers (RFC 9110 §7.6.1: ``Connection``, ``Keep-Alive``, ``Proxy-Authenticate``,
``Proxy-Authorization``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, the legacy
``Proxy-Connection``, and every header named in ``Connection``) describe one connection and
are dropped in both directions by the frontend and by the agent.
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
