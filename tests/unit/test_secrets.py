"""Sealing secrets with the cluster key, names and sizes, and loading the key from config."""

from __future__ import annotations

import base64
import uuid

import pytest

from bismuth_core.config import ConfigError
from bismuth_core.errors import InvalidRequest, SecretUndecryptable, TooLarge
from bismuth_core.secrets import (
    MAX_SECRET_SIZE,
    SecretBox,
    generate_cluster_key,
    load_cluster_key,
    validate_secret_name,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
FID = uuid.UUID("5b3c1a8e-8f7d-4f53-9c1e-2f8f3b4a6d10")
OTHER_FID = uuid.UUID("0e6f4b1a-3c2d-4e5f-8a9b-1c2d3e4f5a6b")


@pytest.mark.parametrize("value", [b"", b"s3cr3t", bytes(range(256)), b"x" * MAX_SECRET_SIZE])
def test_round_trip(value: bytes) -> None:
    box = SecretBox(KEY)
    sealed = box.seal(FID, "DB_PASSWORD", value)
    assert value not in sealed or not value
    assert len(sealed) == 1 + 8 + 12 + len(value) + 16
    assert SecretBox(KEY).open(FID, "DB_PASSWORD", sealed) == value


def test_each_seal_uses_a_fresh_nonce() -> None:
    box = SecretBox(KEY)
    assert box.seal(FID, "a", b"same") != box.seal(FID, "a", b"same")


def test_a_wrong_key_is_named_as_such() -> None:
    sealed = SecretBox(KEY).seal(FID, "token", b"value")
    other = SecretBox(OTHER_KEY)
    with pytest.raises(SecretUndecryptable) as caught:
        other.open(FID, "token", sealed)
    err = caught.value
    assert err.key_mismatch is True and err.status == 503
    assert "sealed with another cluster key" in err.message
    assert SecretBox(KEY).key_id in err.message and other.key_id in err.message
    assert f"'token' of function {FID}" in err.message


@pytest.mark.parametrize("index", [0, 1, 9, 21, -1])
def test_any_altered_byte_is_corrupt_or_another_key(index: int) -> None:
    sealed = bytearray(SecretBox(KEY).seal(FID, "token", b"value"))
    sealed[index] ^= 0x01
    with pytest.raises(SecretUndecryptable) as caught:
        SecretBox(KEY).open(FID, "token", bytes(sealed))
    # byte 0 is the version, 1-8 the key id: those read as unknown format / another key
    expected = "sealed with another cluster key" if 1 <= index <= 8 else "corrupt"
    assert expected in caught.value.message
    assert caught.value.key_mismatch is (1 <= index <= 8)


@pytest.mark.parametrize("sealed", [b"", b"\x01", b"\x01" + bytes(35)])
def test_truncated_values_are_corrupt(sealed: bytes) -> None:
    with pytest.raises(SecretUndecryptable, match=r"corrupt \(.*too short"):
        SecretBox(KEY).open(FID, "token", sealed)


@pytest.mark.parametrize(("fid", "name"), [(OTHER_FID, "token"), (FID, "token2")])
def test_a_value_moved_to_another_function_or_name_does_not_open(fid: uuid.UUID, name: str) -> None:
    sealed = SecretBox(KEY).seal(FID, "token", b"value")
    with pytest.raises(SecretUndecryptable, match="authentication failed") as caught:
        SecretBox(KEY).open(fid, name, sealed)
    assert caught.value.key_mismatch is False


def test_value_size_limit() -> None:
    with pytest.raises(TooLarge, match="65537 bytes; the limit is 65536") as caught:
        SecretBox(KEY).seal(FID, "big", b"x" * (MAX_SECRET_SIZE + 1))
    assert caught.value.status == 413


@pytest.mark.parametrize(
    "name", ["a", "DB_PASSWORD", "api.key", "-x", "_x", "0", "a" * 128, "a.b-c_d.E9"]
)
def test_valid_names(name: str) -> None:
    assert validate_secret_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".env", ".", "..", "a/b", "a b", "é", "a" * 129, "a\n", "a:b", "a%2Fb"]
)
def test_invalid_names_name_the_rule(name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_secret_name(name)
    assert caught.value.status == 400
    assert "1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '.'" in str(
        caught.value
    )


def test_seal_refuses_invalid_names() -> None:
    with pytest.raises(InvalidRequest):
        SecretBox(KEY).seal(FID, ".hidden", b"v")


def test_generated_keys_load_and_differ() -> None:
    first, second = generate_cluster_key(), generate_cluster_key()
    assert first != second
    assert len(load_cluster_key(first)) == 32


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        "  " + base64.b64encode(KEY).decode() + "\n",
    ],
)
def test_key_encodings(text: str) -> None:
    assert load_cluster_key(text) == KEY


def test_key_from_file(tmp_path) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(generate_cluster_key() + "\n")
    key = load_cluster_key(file=str(path))
    assert SecretBox(key).open(FID, "n", SecretBox(key).seal(FID, "n", b"v")) == b"v"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(bytes(16)).decode(), "config cluster_key: decodes to 16 bytes"),
        (
            base64.b64encode(bytes(33)).decode(),
            "decodes to 33 bytes; a cluster key is base64 of 32",
        ),
        ("not base64 at all!", "config cluster_key: not base64 text"),
        ("ключ", "config cluster_key: not base64 text"),
    ],
)
def test_bad_inline_keys(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_cluster_key(value)
    assert value not in str(caught.value)


def test_bad_key_files(tmp_path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError, match=f"cluster key file {missing}: No such file"):
        load_cluster_key(file=str(missing))
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe" * 20)
    with pytest.raises(ConfigError, match=f"cluster key file {binary}: not base64 text"):
        load_cluster_key(file=str(binary))
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(bytes(31)).decode())
    with pytest.raises(ConfigError, match=f"cluster key file {short}: decodes to 31 bytes"):
        load_cluster_key(file=str(short))


def test_no_key_or_both_keys_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no cluster key configured"):
        load_cluster_key()
    with pytest.raises(ConfigError, match="set one of them, not both"):
        load_cluster_key(generate_cluster_key(), str(tmp_path / "cluster.key"))


def test_box_needs_32_bytes() -> None:
    with pytest.raises(ConfigError, match="32 bytes, not 16"):
        SecretBox(bytes(16))
