"""The storage contract (``bismuth_provider.storage.base``), one suite for every backend.

Each test runs against ``local`` (SQLite and files under a temporary directory) and ``s3``
(moto's S3 server on loopback, a fresh bucket per test).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bismuth_core.errors import Conflict, NotFound, TooLarge
from bismuth_provider.storage.base import QuotaExceeded, Quotas, Storage
from bismuth_provider.storage.local import LocalStorage
from bismuth_provider.storage.s3 import S3Storage

MiB = 1 << 20
LIMIT = 64 * MiB

Opener = Callable[..., Storage]


@pytest.fixture(params=["local", "s3"])
async def open_group(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """``open_group(group, quotas=Quotas())``: a backend instance of ``group``, closed after."""
    opened: list[Storage] = []
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        settings = request.getfixturevalue("s3_settings")

        def make(group: str, quotas: Quotas) -> Storage:
            return S3Storage(f"s3://{bucket}/fleet", group, quotas, settings)
    else:

        def make(group: str, quotas: Quotas) -> Storage:
            return LocalStorage(tmp_path / "data", group, quotas)

    def opener(group: str, quotas: Quotas | None = None) -> Storage:
        storage = make(group, quotas or Quotas())
        opened.append(storage)
        return storage

    yield opener
    for storage in opened:
        await storage.close()


@pytest.fixture
def store(open_group: Opener) -> Storage:
    return open_group(new_group())


def new_group() -> str:
    return str(uuid.uuid4())


async def chunked(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)  # let other tasks run between chunks, as a network body does


async def write(
    store: Storage, key: str, data: bytes, mode: str = "create", max_bytes: int = LIMIT
) -> int:
    return await store.blob_write(key, chunked(data), mode, max_bytes)  # type: ignore[arg-type]


async def read(store: Storage, key: str) -> bytes:
    stream = await store.blob_read(key)
    content = b"".join([chunk async for chunk in stream.chunks])
    assert len(content) == stream.size
    return content


# --- key/value ------------------------------------------------------------------------------


async def test_kv_set_get_replace_delete(store: Storage) -> None:
    await store.kv_set("config/colour", b"blue")
    assert await store.kv_get("config/colour") == b"blue"
    await store.kv_set("config/colour", b"green\x00\xff")
    assert await store.kv_get("config/colour") == b"green\x00\xff"
    await store.kv_set("empty", b"")
    assert await store.kv_get("empty") == b""
    await store.kv_delete("config/colour")
    with pytest.raises(NotFound, match="config/colour"):
        await store.kv_get("config/colour")
    assert await store.kv_get("empty") == b""


async def test_kv_missing_key_is_not_found(store: Storage) -> None:
    with pytest.raises(NotFound, match="nothing-here"):
        await store.kv_get("nothing-here")
    with pytest.raises(NotFound, match="nothing-here"):
        await store.kv_delete("nothing-here")
    await store.kv_set("once", b"1")
    await store.kv_delete("once")
    with pytest.raises(NotFound):
        await store.kv_delete("once")


async def test_kv_usage_counts_key_and_value_bytes(store: Storage) -> None:
    assert await store.usage() == Quotas(kv=0, blob=0)
    await store.kv_set("ключ", b"12345")  # 8 bytes of UTF-8 key
    await store.kv_set("k", b"abc")
    assert await store.usage() == Quotas(kv=(8 + 5) + (1 + 3), blob=0)
    await store.kv_set("ключ", b"1")
    assert await store.usage() == Quotas(kv=(8 + 1) + (1 + 3), blob=0)
    await store.kv_delete("ключ")
    assert await store.usage() == Quotas(kv=1 + 3, blob=0)


async def test_kv_quota_refusal_changes_nothing(open_group: Opener) -> None:
    store = open_group(new_group(), Quotas(kv=20))
    await store.kv_set("a", b"x" * 10)  # 11 bytes
    with pytest.raises(QuotaExceeded) as refused:
        await store.kv_set("b", b"y" * 10)  # would be 22
    assert refused.value.status == 413
    assert refused.value.to_json()["quota"] == "kv"
    with pytest.raises(NotFound):
        await store.kv_get("b")
    assert (await store.usage()).kv == 11

    await store.kv_set("a", b"z" * 19)  # replacing frees the old value: exactly 20
    assert (await store.usage()).kv == 20
    with pytest.raises(QuotaExceeded):
        await store.kv_set("a", b"w" * 20)
    assert await store.kv_get("a") == b"z" * 19
    assert (await store.usage()).kv == 20

    await store.kv_set("a", b"s")  # shrinking is always allowed
    await store.kv_set("b", b"y" * 10)
    assert (await store.usage()).kv == 2 + 11


# --- blobs -----------------------------------------------------------------------------------


async def test_blob_create_conflict_replace_delete(store: Storage) -> None:
    assert await write(store, "docs/a.txt", b"first") == 5
    assert await read(store, "docs/a.txt") == b"first"
    assert await store.blob_size("docs/a.txt") == 5
    with pytest.raises(Conflict, match=r"docs/a\.txt"):
        await write(store, "docs/a.txt", b"second")
    assert await read(store, "docs/a.txt") == b"first"

    assert await write(store, "docs/a.txt", b"replaced!", mode="replace") == 9
    assert await read(store, "docs/a.txt") == b"replaced!"
    assert await write(store, "docs/empty", b"") == 0
    assert await read(store, "docs/empty") == b""

    await store.blob_delete("docs/a.txt")
    with pytest.raises(NotFound, match=r"docs/a\.txt"):
        await read(store, "docs/a.txt")
    assert await store.blob_list("", "", 10) == ["docs/empty"]


async def test_blob_missing_is_not_found(store: Storage) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await store.blob_read("ghost")
    with pytest.raises(NotFound, match="ghost"):
        await store.blob_size("ghost")
    with pytest.raises(NotFound, match="ghost"):
        await write(store, "ghost", b"data", mode="replace")
    with pytest.raises(NotFound, match="ghost"):
        await store.blob_read("ghost")
    with pytest.raises(NotFound, match="ghost"):
        await store.blob_delete("ghost")


async def test_blob_usage_and_quota_refusal_changes_nothing(open_group: Opener) -> None:
    store = open_group(new_group(), Quotas(blob=10))
    await write(store, "x", b"123456")
    with pytest.raises(QuotaExceeded) as refused:
        await write(store, "y", b"12345")
    assert refused.value.to_json()["quota"] == "blob"
    with pytest.raises(NotFound):
        await store.blob_read("y")
    assert await store.blob_list("", "", 10) == ["x"]
    assert (await store.usage()).blob == 6

    await write(store, "x", b"0123456789", mode="replace")  # the old 6 bytes are freed
    with pytest.raises(QuotaExceeded):
        await write(store, "x", b"0123456789A", mode="replace")
    assert await read(store, "x") == b"0123456789"
    assert await store.usage() == Quotas(kv=0, blob=10)
    await store.blob_delete("x")
    assert (await store.usage()).blob == 0


class CountingBody:
    """An endless body of ``size``-byte chunks that counts how many were taken."""

    def __init__(self, size: int) -> None:
        self.size, self.taken = size, 0

    def __aiter__(self) -> CountingBody:
        return self

    async def __anext__(self) -> bytes:
        self.taken += 1
        if self.taken > 10_000:
            raise StopAsyncIteration
        return b"n" * self.size


async def test_too_large_stops_the_stream_and_keeps_the_old_blob(store: Storage) -> None:
    await write(store, "keep", b"old content")
    body = CountingBody(300)
    with pytest.raises(TooLarge, match="1000"):
        await store.blob_write("keep", body, "replace", 1000)
    assert body.taken == 4  # refused at the chunk that passed the limit, not at the end
    assert await read(store, "keep") == b"old content"

    body = CountingBody(300)
    with pytest.raises(TooLarge):
        await store.blob_write("fresh", body, "create", 1000)
    assert body.taken == 4
    with pytest.raises(NotFound):
        await store.blob_read("fresh")
    assert await store.blob_list("", "", 10) == ["keep"]
    assert (await store.usage()).blob == len(b"old content")

    assert await write(store, "exact", b"e" * 1000, max_bytes=1000) == 1000  # the limit fits


LIST_KEYS = ["a", "a/b", "a/b/c", "a/c", "a-1", "ab", "B", "b", "z", "é", "日本/x"]


async def test_blob_list_byte_order_prefix_after_limit(store: Storage) -> None:
    for key in reversed(LIST_KEYS):
        await write(store, key, key.encode())
    everything = sorted(LIST_KEYS, key=str.encode)
    assert everything[:4] == ["B", "a", "a-1", "a/b"]
    assert await store.blob_list("", "", 100) == everything
    assert await store.blob_list("a/", "", 100) == ["a/b", "a/b/c", "a/c"]
    assert await store.blob_list("a/", "a/b", 100) == ["a/b/c", "a/c"]
    assert await store.blob_list("a", "a-1", 100) == ["a/b", "a/b/c", "a/c", "ab"]  # '-' < '/'
    assert await store.blob_list("a", "a/c", 100) == ["ab"]
    assert await store.blob_list("b", "a", 100) == ["b"]
    assert await store.blob_list("", "z", 100) == ["é", "日本/x"]
    assert await store.blob_list("", "", 3) == everything[:3]
    assert await store.blob_list("nope/", "", 100) == []
    assert await store.blob_list("", "", 0) == []

    pages, after = [], ""
    while page := await store.blob_list("", after, 2):
        assert len(page) <= 2
        pages.append(page)
        after = page[-1]
    assert [key for page in pages for key in page] == everything
    assert len(pages) == 6


# --- groups and instances ----------------------------------------------------------------------


async def test_groups_do_not_see_each_other(open_group: Opener) -> None:
    one, other = open_group(new_group()), open_group(new_group())
    await one.kv_set("k", b"one's")
    await write(one, "shared-name", b"one's blob")
    with pytest.raises(NotFound):
        await other.kv_get("k")
    with pytest.raises(NotFound):
        await other.blob_read("shared-name")
    assert await other.blob_list("", "", 10) == []
    assert await other.usage() == Quotas(kv=0, blob=0)

    await other.kv_set("k", b"other's")
    await write(other, "shared-name", b"other's blob")  # no Conflict: another group's key
    await other.blob_delete("shared-name")
    assert await one.kv_get("k") == b"one's"
    assert await read(one, "shared-name") == b"one's blob"


async def test_instances_of_one_group_share_data(open_group: Opener) -> None:
    group = new_group()
    first, second = open_group(group), open_group(group)
    await first.kv_set("k", b"v")
    assert await second.kv_get("k") == b"v"
    await write(first, "blob", b"content")
    assert await read(second, "blob") == b"content"
    with pytest.raises(Conflict):
        await write(second, "blob", b"again")
    await write(second, "blob", b"newer", mode="replace")
    assert await read(first, "blob") == b"newer"
    assert await first.usage() == await second.usage() == Quotas(kv=2, blob=5)
    await second.kv_delete("k")
    await second.blob_delete("blob")
    with pytest.raises(NotFound):
        await first.kv_get("k")
    assert await first.blob_list("", "", 10) == []


async def test_racing_creates_one_wins_one_conflicts(open_group: Opener) -> None:
    group = new_group()
    first, second = open_group(group), open_group(group)
    for round_ in range(5):
        key = f"race-{round_}"
        results = await asyncio.gather(
            write(first, key, b"first" * 1000),
            write(second, key, b"second" * 1000),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, int)]
        losers = [r for r in results if isinstance(r, Conflict)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert await read(first, key) in (b"first" * 1000, b"second" * 1000)


# --- readers during writes, large blobs --------------------------------------------------------


async def test_reader_opened_before_a_replace_reads_the_old_content(store: Storage) -> None:
    old, new = b"o" * (4 * MiB), b"N" * (4 * MiB)
    await write(store, "doc", old)
    stream = await store.blob_read("doc")
    first = await anext(stream.chunks)
    await write(store, "doc", new, mode="replace")
    rest = b"".join([chunk async for chunk in stream.chunks])
    assert first + rest == old
    assert await read(store, "doc") == new


async def test_concurrent_readers_see_old_or_new_never_a_mix(store: Storage) -> None:
    old, new = b"o" * MiB, b"N" * MiB
    await write(store, "doc", old)
    seen: list[bytes] = []
    writer = asyncio.create_task(write(store, "doc", new, mode="replace"))

    async def reader() -> None:
        while True:
            done = writer.done()
            seen.append(await read(store, "doc"))
            if done:
                return

    await asyncio.gather(*(reader() for _ in range(4)))
    await writer
    assert set(seen) <= {old, new}
    assert seen.count(old) >= 1 and seen[-1] == new


async def test_large_blob_round_trip_streams_in_chunks(store: Storage) -> None:
    data = random.Random(7).randbytes(5 * MiB + 123)
    assert await write(store, "big/blob.bin", data) == len(data)
    stream = await store.blob_read("big/blob.bin")
    assert stream.size == len(data)
    digest, sizes = hashlib.sha256(), []
    async for chunk in stream.chunks:
        digest.update(chunk)
        sizes.append(len(chunk))
    assert sum(sizes) == len(data)
    assert len(sizes) > 1 and max(sizes) <= MiB  # streamed, never the whole body at once
    assert digest.digest() == hashlib.sha256(data).digest()
    assert (await store.usage()).blob == len(data)
