"""Untrusted JSON: bounded nesting and clear errors instead of crashes."""

from __future__ import annotations

import pytest

from bismuth_core import jsondoc
from bismuth_core.errors import InvalidRequest


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 0), ("x", 0), ([], 1), ({}, 1), ([[1]], 2), ({"a": [{"b": None}]}, 3), ([1, [2, [3]]], 3)],
)
def test_depth(value: object, expected: int) -> None:
    assert jsondoc.depth(value) == expected


def test_a_document_within_the_bound_parses() -> None:
    text = "[" * jsondoc.MAX_DEPTH + "]" * jsondoc.MAX_DEPTH
    assert jsondoc.depth(jsondoc.loads(text)) == jsondoc.MAX_DEPTH


@pytest.mark.parametrize("levels", [jsondoc.MAX_DEPTH + 1, 5_000, 50_000])
@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ('{"a":', "}")])
def test_deeper_documents_are_refused_naming_the_bound(levels: int, open_: str, close: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        jsondoc.loads((open_ * levels + "1" + close * levels).encode(), "request body")
    assert info.value.status == 400
    assert info.value.message == f"request body is nested deeper than {jsondoc.MAX_DEPTH} levels"


def test_unclosed_deep_nesting_is_refused_too() -> None:
    with pytest.raises(InvalidRequest, match="document is nested deeper than 64 levels"):
        jsondoc.loads(b"[" * 50_000)


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b"", b"1" * 5000, b'{"a": NaN'])
def test_not_json_is_invalid_request(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="document is not valid JSON"):
        jsondoc.loads(data)
