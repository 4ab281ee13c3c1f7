"""What only the ``s3`` backend has: object layout, multipart uploads, S3 failures, config."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator

import pytest

from bismuth_core.config import ConfigError
from bismuth_core.errors import Conflict, NotFound, Unavailable
from bismuth_provider.storage import open_storage, s3
from bismuth_provider.storage.base import Quotas
from bismuth_provider.storage.s3 import S3Settings, S3Storage
from tests.support.s3server import s3_client
from tests.support.zkserver import free_port

MiB = 1 << 20


async def chunked(data: bytes, size: int = 256 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def read(storage: S3Storage, key: str) -> bytes:
    stream = await storage.blob_read(key)
    return b"".join([chunk async for chunk in stream.chunks])


def object_keys(settings: S3Settings, bucket: str) -> list[str]:
    listing = s3_client(settings).list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


async def test_objects_live_under_prefix_group_kind(s3_settings, s3_bucket) -> None:
    group = str(uuid.uuid4())
    nested = S3Storage(f"s3://{s3_bucket}/fleet/one/", group, Quotas(), s3_settings)
    top = S3Storage(f"s3://{s3_bucket}", group, Quotas(), s3_settings)
    await nested.kv_set("conf/colour", b"blue")
    await nested.blob_write("a/b.txt", chunked(b"blob"), "create", 100)
    await top.kv_set("k", b"v")
    assert sorted(object_keys(s3_settings, s3_bucket)) == [
        f"{group}/kv/k",
        f"fleet/one/{group}/blob/a/b.txt",
        f"fleet/one/{group}/kv/conf/colour",
    ]
    with pytest.raises(NotFound):  # another prefix is another data set
        await top.kv_get("conf/colour")
    for storage in (nested, top):
        await storage.close()


async def test_open_storage_gives_the_s3_backend(s3_settings, s3_bucket) -> None:
    group = str(uuid.uuid4())
    storage = open_storage(f"s3://{s3_bucket}/p", group, Quotas(kv=100), s3_settings)
    assert isinstance(storage, S3Storage)
    await storage.kv_set("k", b"v")
    assert object_keys(s3_settings, s3_bucket) == [f"p/{group}/kv/k"]
    await storage.close()


async def test_large_blobs_go_up_in_parts(s3_settings, s3_bucket) -> None:
    settings = dataclasses.replace(s3_settings, part_size=5 * MiB)
    storage = S3Storage(f"s3://{s3_bucket}", "g", Quotas(), settings)
    data = random.Random(3).randbytes(11 * MiB)
    assert await storage.blob_write("big", chunked(data), "create", 64 * MiB) == len(data)
    client = s3_client(settings)
    head = client.head_object(Bucket=s3_bucket, Key="g/blob/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert await read(storage, "big") == data

    with pytest.raises(Conflict):
        await storage.blob_write("big", chunked(b"other"), "create", 64 * MiB)
    newer = random.Random(4).randbytes(10 * MiB + 1)
    await storage.blob_write("big", chunked(newer), "replace", 64 * MiB)
    assert await read(storage, "big") == newer
    assert (await storage.usage()).blob == len(newer)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    await storage.close()


async def test_listing_follows_pages(s3_settings, s3_bucket, monkeypatch) -> None:
    monkeypatch.setattr(s3, "LIST_PAGE", 2)
    storage = S3Storage(f"s3://{s3_bucket}", "g", Quotas(), s3_settings)
    keys = [f"k{n}" for n in range(5)]
    for key in keys:
        await storage.blob_write(key, chunked(b"x"), "create", 10)
    assert await storage.blob_list("", "", 100) == keys
    assert await storage.blob_list("", "k0", 3) == keys[1:4]
    await storage.close()


async def test_missing_bucket_is_unavailable_naming_it(s3_settings) -> None:
    bucket = "absent-" + uuid.uuid4().hex[:12]
    storage = S3Storage(f"s3://{bucket}/p", "g", Quotas(kv=10, blob=10), s3_settings)
    calls = [
        lambda: storage.kv_get("k"),
        lambda: storage.kv_set("k", b"v"),
        lambda: storage.kv_delete("k"),
        lambda: storage.blob_read("b"),
        lambda: storage.blob_write("b", chunked(b"x"), "create", 10),
        lambda: storage.blob_write("b", chunked(b"x"), "replace", 10),
        lambda: storage.blob_delete("b"),
        lambda: storage.blob_list("", "", 10),
        storage.usage,
    ]
    for call in calls:
        with pytest.raises(Unavailable, match=f"bucket '{bucket}' does not exist") as failed:
            await call()
        assert failed.value.status == 503
    await storage.close()


async def test_unreachable_endpoint_is_unavailable_without_credentials(s3_settings) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = dataclasses.replace(s3_settings, endpoint=endpoint, max_attempts=1)
    storage = S3Storage("s3://bucket", "g", Quotas(), settings)
    for call in (lambda: storage.kv_get("k"), lambda: storage.blob_list("", "", 1)):
        with pytest.raises(Unavailable) as failed:
            await call()
        message = failed.value.message
        assert endpoint.removeprefix("http://") in message and "did not answer" in message
        assert settings.access_key not in message and settings.secret_key not in message
    await storage.close()


@pytest.mark.parametrize(
    "url, group",
    [
        ("s3:///no-bucket", "g"),
        ("http://bucket/p", "g"),
        ("s3://bucket/p?x=1", "g"),
        ("s3://bucket/p", ""),
        ("s3://bucket/p", "a/b"),
    ],
)
def test_bad_url_or_group_is_a_config_error(url: str, group: str) -> None:
    with pytest.raises(ConfigError, match="storage"):
        S3Storage(url, group, Quotas(), S3Settings(endpoint="http://127.0.0.1:1"))


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"part_size": MiB}, "part_size"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"access_key": "only-the-id"}, "secret_key"),
    ],
)
def test_bad_settings_are_config_errors(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        S3Settings(**fields)  # type: ignore[arg-type]


def test_settings_come_as_one_table_of_strings() -> None:
    """What the agent hands a provider: its provider_s3 table, as it is."""
    table = {"endpoint": "http://127.0.0.1:9", "region": "eu-1", "part_size": str(8 * MiB)}
    got = S3Settings.from_table(table)
    assert (got.endpoint, got.region, got.part_size) == ("http://127.0.0.1:9", "eu-1", 8 * MiB)
    with pytest.raises(ConfigError, match="config s3 bucket: unknown key"):
        S3Settings.from_table({"bucket": "b"})
