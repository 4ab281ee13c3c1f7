"""Rules for the keys of key/value pairs and blobs, checked before any backend sees one.

A key is 1 to ``MAX_KEY_BYTES`` bytes of UTF-8 made of printable characters (no control
characters, no backslash), split by ``/`` into segments that are neither empty, ``.`` nor
``..``; so no key can name a path outside its group's data, on any backend. Each rule
broken gives an ``InvalidRequest`` (400) that names the rule.
"""

from __future__ import annotations

import unicodedata

from bismuth_core.errors import InvalidRequest

MAX_KEY_BYTES = 512


def validate_key(key: str) -> str:
    """``key`` itself, if it may be used; ``InvalidRequest`` naming the broken rule if not."""
    if not key:
        raise InvalidRequest("key: must not be empty")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidRequest(f"key: must be at most {MAX_KEY_BYTES} bytes of UTF-8, not {size}")
    for char in key:
        if unicodedata.category(char) in ("Cc", "Cs", "Cf", "Zl", "Zp", "Co", "Cn"):
            raise InvalidRequest(f"key: control or unassigned character U+{ord(char):04X}")
        if char == "\\":
            raise InvalidRequest("key: must not contain a backslash")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidRequest("key: must not start or end with '/' or contain '//'")
        if segment in (".", ".."):
            raise InvalidRequest("key: must not contain '.' or '..' segments")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: like a key, but may be empty or end in ``/``."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") and len(prefix) > 1 else prefix)
    return prefix
