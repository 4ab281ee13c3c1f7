"""W3C traceparent parsing and the frontend's span."""

from __future__ import annotations

import pytest

from bismuth_fe.tracing import TraceContext, frontend_span, new_trace, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", TraceContext(TRACE, SPAN, "01")),
        (f"00-{TRACE}-{SPAN}-00", TraceContext(TRACE, SPAN, "00")),
        (f" 00-{TRACE}-{SPAN}-01 ", TraceContext(TRACE, SPAN, "01")),
        (f"01-{TRACE}-{SPAN}-01-future-field", TraceContext(TRACE, SPAN, "01")),
        (f"01-{TRACE}-{SPAN}-01", TraceContext(TRACE, SPAN, "01")),
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 has exactly 4 fields
        (f"01-{TRACE}-{SPAN}-01x", None),
        (f"ff-{TRACE}-{SPAN}-01", None),
        (f"00-{TRACE.upper()}-{SPAN}-01", None),
        (f"00-{'0' * 32}-{SPAN}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE[:-1]}g-{SPAN}-01", None),
        (f"00-{TRACE}-{SPAN}-0g", None),
        (f"00_{TRACE}_{SPAN}_01", None),
        (f"0-{TRACE}-{SPAN}-01x", None),
        ("", None),
        ("junk", None),
        (None, None),
    ],
)
def test_parse_traceparent(value, expected):
    assert parse_traceparent(value) == expected


def test_new_trace_is_valid_and_random():
    first, second = new_trace(), new_trace()
    assert parse_traceparent(first.header) == first
    assert first.trace_id != second.trace_id


def test_valid_parent_is_continued_with_a_new_span():
    span, continued = frontend_span([f"00-{TRACE}-{SPAN}-00"])
    assert continued
    assert (span.trace_id, span.flags) == (TRACE, "00")
    assert span.span_id != SPAN and len(span.span_id) == 16
    assert parse_traceparent(span.header) == span


@pytest.mark.parametrize(
    "values",
    [[], ["junk"], [f"00-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-01"]],
)
def test_missing_invalid_or_repeated_parent_starts_a_new_trace(values):
    span, continued = frontend_span(values)
    assert not continued
    assert span.trace_id != TRACE
    assert parse_traceparent(span.header) == span
