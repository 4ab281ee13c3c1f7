"""Function secrets sealed with the cluster key, and the rules for their names and values.

A fleet shares one 32-byte cluster key. It lives in the configuration of the API and of
the agents (``cluster_key``, base64, or ``cluster_key_file``, a file holding that text),
never in ZooKeeper. ZooKeeper holds each secret's value sealed with AES-256-GCM::

    byte  0       format version (1)
    bytes 1-8     key id: the first 8 bytes of SHA-256("bismuth cluster key id v1" NUL key)
    bytes 9-20    random 96-bit nonce
    bytes 21-     ciphertext, then its 16-byte tag

The AES key is derived from the cluster key with HKDF-SHA256. The authenticated data binds
the version, the key id, the function id and the secret's name: a value altered in any byte,
or moved to another function or name, does not open. Opening checks the key id first, so a
value sealed with another cluster key is reported as such, not as corrupt; either way
:class:`SecretUndecryptable` is raised and no garbage is returned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import ConfigError
from .errors import InvalidRequest, SecretUndecryptable, TooLarge

KEY_SIZE = 32  # bytes of a cluster key
MAX_SECRET_SIZE = 64 * 1024  # bytes of one secret's value
MAX_NAME_LENGTH = 128
FORMAT_VERSION = 1

_KEY_ID_SIZE = 8
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER_SIZE = 1 + _KEY_ID_SIZE + _NONCE_SIZE
_KEY_ID_DOMAIN = b"bismuth cluster key id v1\x00"
_HKDF_INFO = b"bismuth function secrets v1: AES-256-GCM"
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
_NAME_RULE = (
    f"1-{MAX_NAME_LENGTH} characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '.'"
)


def validate_secret_name(name: str) -> str:
    """``name`` if it is a valid secret name; :class:`InvalidRequest` naming the rule if not."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        shown = name if not isinstance(name, str) or len(name) <= 64 else name[:64] + "..."
        raise InvalidRequest(f"secret name {shown!r} is invalid: use {_NAME_RULE}")
    return name


def validate_secret_value(value: bytes) -> bytes:
    """``value`` if it fits; :class:`TooLarge` (413) beyond ``MAX_SECRET_SIZE`` bytes."""
    if len(value) > MAX_SECRET_SIZE:
        raise TooLarge(f"secret value is {len(value)} bytes; the limit is {MAX_SECRET_SIZE} bytes")
    return value


def key_id(key: bytes) -> bytes:
    """The 8 bytes that name ``key`` in every value sealed with it (a hash, not the key)."""
    return hashlib.sha256(_KEY_ID_DOMAIN + key).digest()[:_KEY_ID_SIZE]


class SecretBox:
    """Seals and opens secret values with one cluster key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ConfigError(f"a cluster key is {KEY_SIZE} bytes, not {len(key)}")
        self._key_id = key_id(key)
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
        self._aead = AESGCM(derived.derive(key))

    @property
    def key_id(self) -> str:
        """This key's id in hex, as error messages show it."""
        return self._key_id.hex()

    def seal(self, function_id: uuid.UUID, name: str, value: bytes) -> bytes:
        """``value`` encrypted and authenticated for secret ``name`` of ``function_id``."""
        validate_secret_name(name)
        validate_secret_value(value)
        head = bytes([FORMAT_VERSION]) + self._key_id
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, value, _aad(head, function_id, name))
        return head + nonce + sealed

    def open(self, function_id: uuid.UUID, name: str, sealed: bytes) -> bytes:
        """The value sealed for ``name`` of ``function_id``; :class:`SecretUndecryptable` if not."""
        subject = f"secret {name!r} of function {function_id}"
        if len(sealed) < _HEADER_SIZE + _TAG_SIZE:
            raise _corrupt(subject, f"{len(sealed)} bytes is too short to be a sealed value")
        if sealed[0] != FORMAT_VERSION:
            raise _corrupt(subject, f"unknown format version {sealed[0]}")
        head, nonce = sealed[: 1 + _KEY_ID_SIZE], sealed[1 + _KEY_ID_SIZE : _HEADER_SIZE]
        if head[1:] != self._key_id:
            raise SecretUndecryptable(
                f"{subject}: sealed with another cluster key (key id {head[1:].hex()}; "
                f"this cluster key's id is {self.key_id})",
                key_mismatch=True,
            )
        try:
            return self._aead.decrypt(nonce, sealed[_HEADER_SIZE:], _aad(head, function_id, name))
        except InvalidTag:
            raise _corrupt(
                subject, "authentication failed: damaged, or sealed for another function or name"
            ) from None


def _aad(head: bytes, function_id: uuid.UUID, name: str) -> bytes:
    return head + function_id.bytes + name.encode("utf-8")


def _corrupt(subject: str, why: str) -> SecretUndecryptable:
    return SecretUndecryptable(f"{subject}: corrupt ({why})", key_mismatch=False)


# --- the cluster key in configuration --------------------------------------------------


def generate_cluster_key() -> str:
    """A new random cluster key as URL-safe base64 text (44 characters)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_SIZE)).decode("ascii")


def load_cluster_key(value: str = "", file: str = "") -> bytes:
    """The cluster key from base64 text ``value`` or from the file ``file``.

    Standard or URL-safe base64, padding optional, surrounding whitespace ignored; it must
    decode to 32 bytes. Raises :class:`ConfigError` naming the setting (never the key).
    """
    if value and file:
        raise ConfigError("config cluster_key and cluster_key_file: set one of them, not both")
    if file:
        try:
            text = Path(file).read_bytes().decode("ascii")
        except OSError as exc:
            raise ConfigError(f"cluster key file {file}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"cluster key file {file}: not base64 text") from None
        return decode_key(text, f"cluster key file {file}")
    if value:
        return decode_key(value, "config cluster_key")
    raise ConfigError("no cluster key configured (cluster_key or cluster_key_file)")


def decode_key(text: str, where: str) -> bytes:
    """32 bytes from base64 ``text``; :class:`ConfigError` naming ``where`` if not."""
    stripped = text.strip()
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        key = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ConfigError(f"{where}: not base64 text") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(
            f"{where}: decodes to {len(key)} bytes; a cluster key is base64 of {KEY_SIZE} bytes"
        )
    return key
