"""W3C ``traceparent`` as the specification reads it: the reference the frontend's
answers are checked against (https://www.w3.org/TR/trace-context/#traceparent-header)."""

from __future__ import annotations

import re
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


def _is_hex(text: str) -> bool:
    return bool(_HEX.match(text))
