"""API tokens: their text form, how they are made, hashed and checked (pure, no I/O).

A token reads ``bth_<id>_<secret>``: ``id`` is 16 lowercase hex digits (64 random bits) that
name the token's znode, so a lookup is one read; ``secret`` is 43 characters of URL-safe
base64 (256 random bits). Only a SHA-256 of the secret, bound to the id, is ever stored;
a fast hash is right here because the secret is random, not a password. Checking compares
hashes in constant time.

Anything that does not have this exact shape is malformed: it is refused before any lookup,
whatever its length or bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "bth_"
ID_HEX = 16
SECRET_BYTES = 32
_TOKEN_RE = re.compile(rf"{PREFIX}(?P<id>[0-9a-f]{{{ID_HEX}}})_(?P<secret>[A-Za-z0-9_-]{{43}})\Z")
_ID_RE = re.compile(rf"[0-9a-f]{{{ID_HEX}}}\Z")
_DOMAIN = b"bismuth api token v1\x00"


class Scope(StrEnum):
    """What a token may do: ``admin`` every tenant's things, ``tenant`` its own tenant's."""

    ADMIN = "admin"
    TENANT = "tenant"


@dataclass(frozen=True)
class IssuedToken:
    """A new token: ``text`` is shown once, ``digest`` is what gets stored."""

    id: str
    text: str
    digest: str


@dataclass(frozen=True)
class PresentedToken:
    """A token as a caller sent it, split into its id and secret (shape checked only)."""

    id: str
    secret: str


def is_token_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def digest(token_id: str, secret: str) -> str:
    """Hex SHA-256 of the secret, bound to its id (and to this format)."""
    return hashlib.sha256(_DOMAIN + token_id.encode() + b"\x00" + secret.encode()).hexdigest()


def issue() -> IssuedToken:
    """A fresh random token."""
    token_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return IssuedToken(token_id, f"{PREFIX}{token_id}_{secret}", digest(token_id, secret))


def parse(text: str) -> PresentedToken | None:
    """The id and secret of ``text``, or ``None`` if it is not a token's shape."""
    match = _TOKEN_RE.match(text)
    if match is None:
        return None
    return PresentedToken(match.group("id"), match.group("secret"))


def matches(token: PresentedToken, stored_digest: str) -> bool:
    """Whether ``token``'s secret is the one ``stored_digest`` was made from (constant time)."""
    return hmac.compare_digest(digest(token.id, token.secret), stored_digest)


def bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, else ``None``."""
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None
