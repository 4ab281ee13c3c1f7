"""API tokens and tenant names: format, hashing, checking, and what is refused (pure logic)."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bismuth_core import layout, tokens
from bismuth_core.errors import InvalidRequest
from bismuth_core.layout import TokenRecord
from bismuth_core.tenancy import authenticate, validate_tenant_name
from bismuth_core.tokens import Scope


def test_issued_tokens_are_random_prefixed_and_parse_back() -> None:
    first, second = tokens.issue(), tokens.issue()
    assert first.text != second.text and first.id != second.id
    assert first.text.startswith(f"bth_{first.id}_") and len(first.text) == 64
    presented = tokens.parse(first.text)
    assert presented is not None and presented.id == first.id
    assert tokens.matches(presented, first.digest)
    assert not tokens.matches(presented, second.digest)
    assert first.digest not in first.text and len(first.digest) == 64


def test_the_hash_binds_the_id() -> None:
    issued = tokens.issue()
    presented = tokens.parse(issued.text)
    assert presented is not None
    other_id = tokens.PresentedToken("0" * 16, presented.secret)
    assert not tokens.matches(other_id, issued.digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bth_",
        "bth_0123456789abcdef_",
        "bth_0123456789ABCDEF_" + "a" * 43,  # upper-case id
        "bth_0123456789abcde_" + "a" * 44,  # short id
        "bth_0123456789abcdef_" + "a" * 42,
        "bth_0123456789abcdef_" + "a" * 44,
        "bth_0123456789abcdef_" + "a" * 42 + "=",
        "xyz_0123456789abcdef_" + "a" * 43,
        "bth_0123456789abcdef_" + "a" * 42 + "\n",
        " bth_0123456789abcdef_" + "a" * 43,
    ],
)
def test_malformed_tokens_do_not_parse(text: str) -> None:
    assert tokens.parse(text) is None


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_without_error(text: str) -> None:
    presented = tokens.parse(text)
    if presented is not None:
        assert text == f"bth_{presented.id}_{presented.secret}"


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
    ],
)
def test_bearer_header(header: str | None, credential: str | None) -> None:
    assert tokens.bearer(header) == credential


def test_authenticate_needs_the_matching_record() -> None:
    issued = tokens.issue()
    presented = tokens.parse(issued.text)
    assert presented is not None
    tid = uuid.uuid4()
    record = TokenRecord(tid, "tenant", issued.digest)
    caller = authenticate(presented, record)
    assert caller is not None and caller.tenant == tid and not caller.is_admin
    admin = authenticate(presented, TokenRecord(None, "admin", issued.digest))
    assert admin is not None and admin.is_admin and admin.scope == Scope.ADMIN
    assert authenticate(presented, None) is None
    assert authenticate(presented, TokenRecord(tid, "tenant", "0" * 64)) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"{",
        json.dumps({"scope": "root", "sha256": "0" * 64}).encode(),
        json.dumps({"scope": "tenant", "sha256": "0" * 64}).encode(),  # no tenant
        json.dumps({"scope": "admin", "sha256": "0" * 64, "tenant": "x"}).encode(),
        json.dumps({"scope": "admin", "sha256": "0" * 63}).encode(),
        json.dumps({"scope": "admin", "sha256": 5}).encode(),
    ],
)
def test_unusable_token_records_decode_as_none(data: bytes) -> None:
    assert TokenRecord.decode(data) is None


def test_token_record_round_trip() -> None:
    tid = uuid.uuid4()
    record = TokenRecord(tid, "tenant", "a" * 64, 12.5)
    assert TokenRecord.decode(record.encode()) == record
    admin = TokenRecord(None, "admin", "b" * 64, 1.0)
    assert TokenRecord.decode(admin.encode()) == admin


@pytest.mark.parametrize(
    "name", ["acme", "Ünïcödé GmbH", "東京チーム", "a", "x" * 64, "o'neil & sons", "a b"]
)
def test_valid_tenant_names(name: str) -> None:
    assert validate_tenant_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " acme",
        "acme ",
        "x" * 65,
        "tab\there",
        "new\nline",
        "nul\x00",
        "bidi\u202eoverride",
        "zero\u200bwidth",
        "\ud800",
        str(uuid.uuid4()),
        5,
        None,
    ],
)
def test_invalid_tenant_names(name: object) -> None:
    with pytest.raises(InvalidRequest, match="tenant name"):
        validate_tenant_name(name)


def test_names_are_stored_in_nfc_and_reserved_ignoring_case() -> None:
    decomposed = "Cafe\u0301"
    assert validate_tenant_name(decomposed) == "Caf\u00e9"
    key = layout.tenant_name_key
    assert key("Café") == key("CAFÉ") == key(decomposed) == key("café")
    assert key("acme") != key("acme2")
    assert len(key("東京")) == 64


@given(st.text(min_size=1, max_size=64))
def test_any_valid_name_has_a_znode_safe_key(name: str) -> None:
    try:
        valid = validate_tenant_name(name)
    except InvalidRequest:
        return
    assert all(c in "0123456789abcdef" for c in layout.tenant_name_key(valid))
