"""Hop-by-hop filtering and the headers added on each side."""

from __future__ import annotations

from multidict import CIMultiDict

from bismuth_fe.headers import downstream_headers, end_to_end, upstream_headers


def test_end_to_end_drops_fixed_and_connection_listed_headers_keeping_repeats():
    headers = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Hop-A"),
            ("connection", "x-hop-b"),
            ("X-Hop-A", "1"),
            ("X-HOP-B", "2"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Content-Length", "10"),
        ]
    )
    kept = end_to_end(headers)
    assert list(kept.items()) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "10"),
    ]


def test_upstream_headers_forwarding_and_trace():
    incoming = CIMultiDict(
        [
            ("Host", "App.Test:8000"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "spoofed"),
            ("traceparent", "old"),
            ("tracestate", "v=1"),
            ("Expect", "100-continue"),
            ("Accept", "text/plain"),
            ("X-Bismuth-Agent-Credential", "a client's guess"),
        ]
    )
    out = upstream_headers(
        incoming,
        client="192.0.2.4",
        host="App.Test:8000",
        traceparent="new",
        keep_tracestate=True,
        agent_credential="ours",
    )
    assert out.getall("X-Bismuth-Agent-Credential") == ["ours"]
    assert out["Host"] == "App.Test:8000"
    assert out.getall("X-Forwarded-For") == ["203.0.113.9, 198.51.100.1, 192.0.2.4"]
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "App.Test:8000"
    assert out.getall("traceparent") == ["new"]
    assert out["tracestate"] == "v=1"
    assert "Expect" not in out
    assert out["Accept"] == "text/plain"
    fresh = upstream_headers(
        incoming,
        client=None,
        host="h",
        traceparent="new",
        keep_tracestate=False,
        agent_credential="c",
    )
    assert "tracestate" not in fresh
    assert fresh["X-Forwarded-For"].endswith(", unknown")


def test_downstream_headers_replace_ours():
    upstream = CIMultiDict(
        [
            ("Content-Type", "text/plain"),
            ("X-Bismuth-Container-ID", "forged"),
            ("X-Bismuth-Not-Forwarded", "1"),
            ("traceparent", "theirs"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
        ]
    )
    out = downstream_headers(upstream, container_id="cid", traceparent="ours")
    assert dict(out) == {
        "Content-Type": "text/plain",
        "X-Bismuth-Container-ID": "cid",
        "traceparent": "ours",
    }
