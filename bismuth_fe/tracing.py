"""W3C Trace Context (``traceparent``): keep the caller's trace, add the frontend's span.

A valid incoming ``traceparent`` keeps its trace-id and flags and gets a new span id (the
frontend's span, which becomes the parent of whatever the container does); anything else
starts a new trace. The result is sent upstream and returned on the response. See
https://www.w3.org/TR/trace-context/#traceparent-header.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "00"
SAMPLED = "01"

_HEX = re.compile(r"^[0-9a-f]+$")
_V00_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2


@dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    flags: str  # 2 lowercase hex digits

    @property
    def header(self) -> str:
        return f"{VERSION}-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, _random_id(8), self.flags)


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context in a ``traceparent`` value, or ``None`` if it is not a valid one.

    Versions above ``00`` are read with version-00 rules, ignoring trailing fields.
    """
    if value is None:
        return None
    value = value.strip()
    if len(value) < _V00_LENGTH:
        return None
    version = value[:2]
    if not _is_hex(version) or version == "ff":
        return None
    if version == VERSION and len(value) != _V00_LENGTH:
        return None
    if len(value) > _V00_LENGTH and value[_V00_LENGTH] != "-":
        return None
    parts = value[:_V00_LENGTH].split("-")
    if len(parts) != 4:
        return None
    _, trace_id, span_id, flags = parts
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        return None
    if not all(map(_is_hex, (trace_id, span_id, flags))):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, flags)


def new_trace() -> TraceContext:
    return TraceContext(_random_id(16), _random_id(8), SAMPLED)


def frontend_span(incoming: Sequence[str]) -> tuple[TraceContext, bool]:
    """The frontend's span for a request's ``traceparent`` header values.

    Returns ``(context, continued)``; ``continued`` is False when a new trace was started
    (no header, several headers, or an invalid one), in which case ``tracestate`` must not
    be passed on.
    """
    parent = parse_traceparent(incoming[0]) if len(incoming) == 1 else None
    if parent is None:
        return new_trace(), False
    return parent.child(), True


def _is_hex(text: str) -> bool:
    return bool(_HEX.match(text))


def _random_id(size: int) -> str:
    while True:
        value = secrets.token_hex(size)
        if value.strip("0"):
            return value
