"""What a storage backend offers the provider: one group's key/value pairs and blobs.

A backend instance serves exactly one data scope (a service group); callers never pass the
group again. Keys reach a backend already validated (``bismuth_provider.keys``). Every
method is a coroutine; blocking work runs off the event loop.

Contracts every backend keeps (the shared suite in ``tests/provider/`` checks them):

- ``kv_get`` / ``blob_read`` / ``kv_delete`` / ``blob_delete`` of a missing key raise
  ``NotFound``.
- ``kv_set`` creates or replaces. A write that would take the group's usage past its quota
  raises ``QuotaExceeded`` and changes nothing; usage counts key and value bytes for
  key/value pairs, and content bytes for blobs.
- ``blob_write(mode="create")`` raises ``Conflict`` if the key exists,
  ``blob_write(mode="replace")`` raises ``NotFound`` if it does not. The body arrives as an
  async iterator of chunks and is streamed to storage; more than ``max_bytes`` raises
  ``TooLarge``. A failed or refused write leaves the old blob (or no blob) in place, and a
  reader sees either the old content or the new, never a mix.
- ``blob_list`` returns keys in byte order, those starting with ``prefix`` and greater than
  ``after``, at most ``limit`` of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from bismuth_core.errors import TooLarge

WriteMode = Literal["create", "replace"]
SPOOL_BATCH = 1 << 20  # bytes gathered before each write of a spooled body


class QuotaExceeded(TooLarge):
    """A write would take the group past its quota; nothing was changed."""

    def __init__(self, kind: str, used: int, adding: int, quota: int) -> None:
        super().__init__(
            f"{kind} quota exceeded: {used} bytes used, this write needs {adding} more, "
            f"quota is {quota} bytes"
        )
        self.kind = kind

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "quota": self.kind}


@dataclass(frozen=True)
class Quotas:
    """Byte limits of one group; ``None`` is unlimited."""

    kv: int | None = None
    blob: int | None = None


@dataclass(frozen=True)
class BlobStream:
    """An open blob: its size, and its content as chunks (read once)."""

    size: int
    chunks: AsyncIterator[bytes]


class Storage(Protocol):
    async def kv_get(self, key: str) -> bytes: ...

    async def kv_set(self, key: str, value: bytes) -> None: ...

    async def kv_delete(self, key: str) -> None: ...

    async def blob_list(self, prefix: str, after: str, limit: int) -> list[str]: ...

    async def blob_read(self, key: str) -> BlobStream: ...

    async def blob_size(self, key: str) -> int:
        """The blob's size in bytes, without opening it (HEAD); ``NotFound`` if missing."""
        ...

    async def blob_write(
        self, key: str, body: AsyncIterator[bytes], mode: WriteMode, max_bytes: int
    ) -> int:
        """Store the blob; returns its size in bytes."""
        ...

    async def blob_delete(self, key: str) -> None: ...

    async def usage(self) -> Quotas:
        """Bytes in use now, as a ``Quotas`` of used bytes."""
        ...

    async def close(self) -> None: ...


async def spool(body: AsyncIterator[bytes], out: BinaryIO, max_bytes: int) -> int:
    """Copy ``body`` into ``out`` in batches written off the loop; ``TooLarge`` past the limit.

    Returns the body's size. Both backends receive a blob this way before they store it.
    """
    size, batch = 0, bytearray()
    async for chunk in body:
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"blob: larger than the limit of {max_bytes} bytes")
        batch += chunk
        if len(batch) >= SPOOL_BATCH:
            await asyncio.to_thread(out.write, bytes(batch))
            batch.clear()
    if batch:
        await asyncio.to_thread(out.write, bytes(batch))
    return size
