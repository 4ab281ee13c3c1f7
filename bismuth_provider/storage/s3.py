"""The ``s3`` backend: one group's data as objects in an S3-compatible bucket.

``s3://bucket[/prefix]`` keeps key/value pairs at ``<prefix>/<group>/kv/<key>`` and blobs at
``<prefix>/<group>/blob/<key>``, so every host's providers of a group see the same data. The
bucket must exist (operators create it); a missing bucket, an unreachable endpoint or
refused credentials give ``Unavailable``, whose message names the bucket or endpoint and
never a credential.

Blob bodies are spooled to a temporary file (``TooLarge`` past the limit, before anything
is uploaded), then sent in one ``PutObject`` or, past ``S3Settings.part_size``, as a
multipart upload. ``create`` is a conditional write (``If-None-Match: *``): of two writers
racing for one key, one gets ``Conflict``. ``replace`` writes ``If-Match`` the ETag it saw,
so a blob deleted meanwhile gives ``NotFound`` rather than coming back. S3 replaces an
object atomically, so a reader sees the old content or the new, never a mix. Endpoints that
ignore conditional headers lose only these race guarantees.

Limits of S3 that the ``local`` backend does not have:

- Quota checks list the group's objects (key plus value bytes under ``kv/``, content bytes
  under ``blob/``) and are not atomic across concurrent writers: writers racing each other
  can overshoot a quota by at most the bytes of the writes in flight.
- ``kv_delete`` and ``blob_delete`` check that the object exists, then delete it; two
  deletes racing for one key may both succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as ConnectFailed

from bismuth_core.config import ConfigError, load_config
from bismuth_core.errors import BismuthError, Conflict, NotFound, Unavailable

from .base import BlobStream, QuotaExceeded, Quotas, WriteMode, spool

T = TypeVar("T")

READ_CHUNK = 64 << 10
MIN_PART_SIZE = 5 << 20  # S3's smallest part (but the last) of a multipart upload
LIST_PAGE = 1000  # S3's largest ListObjectsV2 page
WRITE_ATTEMPTS = 3  # conditional writes retried when another writer got in between
# S3's answers to a conditional write whose condition failed, or met a concurrent one.
CHANGED = ("PreconditionFailed", "ConditionalRequestConflict")


@dataclass(frozen=True)
class S3Settings:
    # Endpoint URL of an S3-compatible service; "" = AWS S3 of ``region``.
    endpoint: str = ""
    region: str = "us-east-1"
    # "" for both = boto3's default credential chain (environment, profile, instance role).
    access_key: str = ""
    secret_key: str = ""
    # Blobs larger than this go up as a multipart upload of parts this large.
    part_size: int = 16 << 20
    # Tries of each request (boto3's "standard" retries with backoff).
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ConfigError(f"config s3 part_size: at least {MIN_PART_SIZE} bytes")
        if self.max_attempts < 1:
            raise ConfigError("config s3 max_attempts: at least 1")
        if bool(self.access_key) != bool(self.secret_key):
            raise ConfigError("config s3 access_key, secret_key: give both or neither")

    @classmethod
    def from_table(cls, table: Mapping[str, str]) -> S3Settings:
        """The settings from a table of strings (the agent's ``provider_s3``, as it is)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"config s3 {unknown[0]}: unknown key (known: {', '.join(sorted(known))})"
            )
        return load_config(cls, env={}, overrides=table)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Storage:
    def __init__(self, url: str, group: str, quotas: Quotas, settings: S3Settings) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"config storage: want s3://bucket[/prefix], not {url!r}")
        if not group or "/" in group:
            raise ConfigError(f"storage group: must be one non-empty path segment, not {group!r}")
        self.bucket = parts.netloc
        self.base = "/".join(p for p in (parts.path.strip("/"), group) if p)
        self.quotas = quotas
        self.settings = settings
        self._where = settings.endpoint.split("@")[-1] or f"AWS S3 ({settings.region})"
        self._client = self._make_client(settings)

    @staticmethod
    def _make_client(settings: S3Settings) -> Any:
        config = Config(
            region_name=settings.region,
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,  # open blob streams each hold one
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            # Path-style URLs and checksums only where required: what S3-compatible
            # services other than AWS accept.
            s3={"addressing_style": "path" if settings.endpoint else "auto"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key or None,
            aws_secret_access_key=settings.secret_key or None,
            region_name=settings.region,
        )
        return session.client("s3", endpoint_url=settings.endpoint or None, config=config)

    def _object(self, kind: str, key: str) -> str:
        return f"{self.base}/{kind}/{key}"

    # --- running S3 calls off the loop, and their errors ------------------------------------

    async def _run(self, what: str, work: Callable[[], T]) -> T:
        """Run ``work`` (blocking S3 calls) in a thread; its boto errors become ours."""
        try:
            return await asyncio.to_thread(work)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(what, exc) from None

    def _translate(self, what: str, exc: ClientError | BotoCoreError) -> BismuthError:
        if isinstance(exc, ClientError):
            code, status = _error_code(exc), _http_status(exc)
            if code == "NoSuchBucket":
                return self._missing_bucket()
            if code in ("NoSuchKey", "NotFound") or status == 404:
                return NotFound(f"{what}: not found")
            if code in CHANGED:
                return Conflict(f"{what}: changed by another writer")
            return Unavailable(
                f"S3 bucket {self.bucket!r} at {self._where}: {what} failed "
                f"({code or 'HTTP'} {status})"
            )
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return Unavailable(f"S3 at {self._where}: no credentials configured")
        if isinstance(exc, (ConnectFailed, HTTPClientError)):
            return Unavailable(f"S3 at {self._where} did not answer ({type(exc).__name__})")
        return Unavailable(f"S3 at {self._where}: {what} failed ({type(exc).__name__})")

    def _missing_bucket(self) -> Unavailable:
        return Unavailable(f"S3 bucket {self.bucket!r} does not exist at {self._where}")

    def _stat(self, kind: str, key: str) -> dict[str, Any] | None:
        """The object's ``HeadObject`` answer, or ``None`` if it does not exist (blocking)."""
        try:
            head: dict[str, Any] = self._client.head_object(
                Bucket=self.bucket, Key=self._object(kind, key)
            )
            return head
        except ClientError as exc:
            if _http_status(exc) != 404:
                raise
        try:  # a 404 without a body: the object, or the whole bucket, is missing
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _http_status(exc) == 404:
                raise self._missing_bucket() from None
            raise
        return None

    def _measure(self, kind: str, key: str) -> tuple[int, int]:
        """Bytes ``kind`` uses in the group, and how many of them ``key`` holds (blocking)."""
        prefix = f"{self.base}/{kind}/"
        used = held = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :]
                size = int(item["Size"]) + (len(name.encode()) if kind == "kv" else 0)
                used += size
                if name == key:
                    held = size
        return used, held

    async def _charge(self, kind: str, key: str, size: int) -> None:
        """``QuotaExceeded`` if storing ``size`` bytes at ``key`` would pass ``kind``'s quota."""
        quota = getattr(self.quotas, kind)
        if quota is None:
            return
        used, held = await self._run(f"measure {kind} usage", lambda: self._measure(kind, key))
        delta = size - held
        if delta > 0 and used + delta > quota:
            raise QuotaExceeded(kind, used, delta, quota)

    # --- key/value ----------------------------------------------------------------------------

    async def kv_get(self, key: str) -> bytes:
        def get() -> bytes:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._object("kv", key))
            with contextlib.closing(answer["Body"]) as body:
                return bytes(body.read())

        return await self._found(f"no value for key {key!r}", "read key", get)

    async def kv_set(self, key: str, value: bytes) -> None:
        await self._charge("kv", key, len(key.encode()) + len(value))
        target = self._object("kv", key)
        await self._run(
            "write key",
            lambda: self._client.put_object(Bucket=self.bucket, Key=target, Body=value),
        )

    async def kv_delete(self, key: str) -> None:
        await self._delete("kv", key, f"no value for key {key!r}")

    async def _found(self, missing: str, what: str, work: Callable[[], T]) -> T:
        try:
            return await self._run(what, work)
        except NotFound:
            raise NotFound(missing) from None

    async def _delete(self, kind: str, key: str, missing: str) -> None:
        def delete() -> None:
            if self._stat(kind, key) is None:
                raise NotFound(missing)
            self._client.delete_object(Bucket=self.bucket, Key=self._object(kind, key))

        await self._run(f"delete {kind}", delete)

    # --- blobs ----------------------------------------------------------------------------------

    async def blob_list(self, prefix: str, after: str, limit: int) -> list[str]:
        return await self._run("list blobs", lambda: self._list(prefix, after, limit))

    def _list(self, prefix: str, after: str, limit: int) -> list[str]:
        root = f"{self.base}/blob/"
        keys: list[str] = []
        start = after
        while len(keys) < limit:
            query: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": root + prefix,
                "MaxKeys": min(LIST_PAGE, limit - len(keys)),
            }
            if start:
                query["StartAfter"] = root + start
            page = self._client.list_objects_v2(**query)
            names = [item["Key"][len(root) :] for item in page.get("Contents", [])]
            keys += names
            if not page.get("IsTruncated") or not names:
                break
            start = names[-1]
        return keys

    async def blob_read(self, key: str) -> BlobStream:
        target = self._object("blob", key)
        answer = await self._found(
            f"no blob {key!r}",
            "read blob",
            lambda: self._client.get_object(Bucket=self.bucket, Key=target),
        )
        return BlobStream(int(answer["ContentLength"]), self._chunks(answer["Body"]))

    async def blob_size(self, key: str) -> int:
        head = await self._run("check blob", lambda: self._stat("blob", key))
        if head is None:
            raise NotFound(f"no blob {key!r}")
        return int(head["ContentLength"])

    async def _chunks(self, body: Any) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._run("read blob", lambda: body.read(READ_CHUNK)):
                yield chunk
        finally:
            body.close()

    async def blob_write(
        self, key: str, body: AsyncIterator[bytes], mode: WriteMode, max_bytes: int
    ) -> int:
        await self._run("check blob", lambda: self._expect(key, mode))  # fail before the body
        spooled = await asyncio.to_thread(tempfile.TemporaryFile)
        try:
            size = await spool(body, spooled, max_bytes)
            await self._charge("blob", key, size)
        except BaseException:
            await asyncio.to_thread(spooled.close)
            raise
        # The upload's thread closes the spool file, even if this task is cancelled meanwhile.
        await self._run("write blob", lambda: self._upload(key, spooled, size, mode))
        return size

    def _expect(self, key: str, mode: WriteMode) -> str:
        """The ETag ``mode`` may overwrite ("" = none); ``Conflict``/``NotFound`` otherwise."""
        head = self._stat("blob", key)
        if mode == "create" and head is not None:
            raise Conflict(f"blob {key!r} exists; replace it with PUT")
        if mode == "replace" and head is None:
            raise NotFound(f"no blob {key!r}; create it with POST")
        return "" if head is None else str(head["ETag"])

    def _upload(self, key: str, spooled: BinaryIO, size: int, mode: WriteMode) -> None:
        """Upload the spooled blob on the condition ``mode`` sets, then close it (blocking)."""
        with spooled:
            for _ in range(WRITE_ATTEMPTS):
                if mode == "create":
                    condition = {"IfNoneMatch": "*"}
                else:  # replace what is there now, unless it is gone
                    condition = {"IfMatch": self._expect(key, mode)}
                try:
                    self._put_file(self._object("blob", key), spooled, size, condition)
                    return
                except ClientError as exc:
                    code = _error_code(exc)
                    if mode == "create" and code == "PreconditionFailed":
                        raise Conflict(f"blob {key!r} exists; replace it with PUT") from None
                    if code not in (*CHANGED, "NoSuchKey"):
                        raise
        raise Conflict(f"blob {key!r} kept changing while it was written; try again")

    def _put_file(
        self, target: str, spooled: BinaryIO, size: int, condition: dict[str, str]
    ) -> None:
        spooled.seek(0)
        part = self.settings.part_size
        if size <= part:
            self._client.put_object(
                Bucket=self.bucket, Key=target, Body=spooled, ContentLength=size, **condition
            )
            return
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=target)["UploadId"]
        try:
            parts = [
                {"PartNumber": number, "ETag": self._put_part(target, upload, number, spooled)}
                for number in range(1, (size + part - 1) // part + 1)
            ]
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=target,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload)
            raise

    def _put_part(self, target: str, upload: str, number: int, spooled: BinaryIO) -> str:
        data = spooled.read(self.settings.part_size)
        answer = self._client.upload_part(
            Bucket=self.bucket, Key=target, UploadId=upload, PartNumber=number, Body=data
        )
        return str(answer["ETag"])

    async def blob_delete(self, key: str) -> None:
        await self._delete("blob", key, f"no blob {key!r}")

    async def usage(self) -> Quotas:
        (kv, _), (blob, _) = await asyncio.gather(
            self._run("measure kv usage", lambda: self._measure("kv", "")),
            self._run("measure blob usage", lambda: self._measure("blob", "")),
        )
        return Quotas(kv=kv, blob=blob)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
