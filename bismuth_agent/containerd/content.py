"""containerd's content store: blobs addressed by digest, written through the Write stream.

A write is an *ingest* named by a ref: ``STAT`` opens (or resumes) it, ``WRITE`` appends at
the current offset, ``COMMIT`` checks the expected digest and size and makes the blob
visible under its digest. containerd answers each request with one response, so
``ContentWriter`` talks in lockstep. Blobs nothing references are garbage-collected: write
them under a lease and link them with ``containerd.io/gc.ref.*`` labels (see ``oci.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType

import grpc
from google.protobuf import field_mask_pb2

from bismuth_agent.containerd._api.containerd.services.content.v1 import (
    content_pb2,
    content_pb2_grpc,
)
from bismuth_agent.containerd.connection import Connection
from bismuth_agent.containerd.errors import (
    AlreadyExists,
    ContainerdError,
    NotFound,
    translate,
    translated,
)
from bismuth_agent.containerd.types import ContentInfo, IngestStatus, timestamp

READ_CHUNK = 1024 * 1024


def _info(msg: content_pb2.Info) -> ContentInfo:
    return ContentInfo(
        msg.digest,
        msg.size,
        dict(msg.labels),
        timestamp(msg.created_at),
        timestamp(msg.updated_at),
    )


class ContentWriter:
    """One open ingest on the Write stream; use as ``async with store.writer(...) as w``."""

    def __init__(self, conn: Connection, ref: str, expected: str, total: int) -> None:
        stub = content_pb2_grpc.ContentStub(conn.channel)
        self._call = stub.Write(**conn.stream())
        self.ref, self.expected, self.total = ref, expected, total
        self.offset = 0
        self.digest = ""

    async def _send(
        self, request: content_pb2.WriteContentRequest
    ) -> content_pb2.WriteContentResponse:
        try:
            await self._call.write(request)
            reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        if reply is grpc.aio.EOF or not isinstance(reply, content_pb2.WriteContentResponse):
            code = await self._call.code()
            raise ContainerdError(code.name, await self._call.details() or "write stream ended")
        self.offset = reply.offset
        self.digest = reply.digest or self.digest
        return reply

    async def open(self) -> IngestStatus:
        """Start (or resume) the ingest; ``AlreadyExists`` if the expected blob is there."""
        return await self.status()

    async def status(self) -> IngestStatus:
        request = content_pb2.WriteContentRequest(
            action=content_pb2.STAT, ref=self.ref, total=self.total, expected=self.expected
        )
        reply = await self._send(request)
        return IngestStatus(self.ref, reply.offset, reply.total, self.expected)

    async def write(self, data: bytes) -> None:
        """Append ``data`` at the current offset."""
        request = content_pb2.WriteContentRequest(
            action=content_pb2.WRITE, ref=self.ref, offset=self.offset, data=data
        )
        await self._send(request)

    async def restart(self) -> None:
        """Drop what a resumed ingest held and write from offset 0 again."""
        request = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=self.ref, offset=0)
        await self._send(request)

    async def commit(self, labels: Mapping[str, str] | None = None) -> str:
        """Check digest and size and publish the blob; returns its digest."""
        request = content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT,
            ref=self.ref,
            offset=self.offset,
            total=self.total,
            expected=self.expected,
            labels=dict(labels or {}),
        )
        await self._send(request)
        return self.digest

    async def close(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self._call.done_writing()
        self._call.cancel()

    async def __aenter__(self) -> ContentWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ContentStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = content_pb2_grpc.ContentStub(conn.channel)

    @translated
    async def info(self, digest: str) -> ContentInfo:
        reply = await self._conn.call(self._stub.Info, content_pb2.InfoRequest(digest=digest))
        return _info(reply.info)

    async def exists(self, digest: str) -> bool:
        try:
            await self.info(digest)
        except NotFound:
            return False
        return True

    @translated
    async def list(self, filters: Iterable[str] = ()) -> list[ContentInfo]:
        request = content_pb2.ListContentRequest(filters=list(filters))
        found: list[ContentInfo] = []
        async for reply in self._stub.List(request, **self._conn.stream()):
            found.extend(_info(info) for info in reply.info)
        return found

    @translated
    async def set_labels(self, digest: str, labels: Mapping[str, str]) -> ContentInfo:
        """Set (add or replace) these labels on a blob, leaving its other labels alone."""
        request = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels]),
        )
        reply = await self._conn.call(self._stub.Update, request)
        return _info(reply.info)

    @translated
    async def delete(self, digest: str) -> None:
        await self._conn.call(self._stub.Delete, content_pb2.DeleteContentRequest(digest=digest))

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks (from ``offset``; ``size`` 0 = to the end)."""
        request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        try:
            async for reply in self._stub.Read(request, **self._conn.stream()):
                yield reply.data
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None

    async def read_all(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])

    @translated
    async def status(self, ref: str) -> IngestStatus:
        """An unfinished ingest (``NotFound`` if there is none under ``ref``)."""
        reply = await self._conn.call(self._stub.Status, content_pb2.StatusRequest(ref=ref))
        s = reply.status
        return IngestStatus(s.ref, s.offset, s.total, s.expected)

    @translated
    async def abort(self, ref: str) -> None:
        with contextlib.suppress(NotFound):
            await self._conn.call(self._stub.Abort, content_pb2.AbortRequest(ref=ref))

    def writer(self, ref: str, expected: str = "", total: int = 0) -> ContentWriter:
        return ContentWriter(self._conn, ref, expected, total)

    async def write(
        self,
        ref: str,
        chunks: AsyncIterable[bytes] | bytes,
        *,
        expected: str,
        total: int,
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Store a blob of known digest and size; False if it was there already.

        containerd verifies ``expected`` and ``total`` at commit: a mismatch raises
        ``ContainerdError`` (FAILED_PRECONDITION) and nothing is stored. Labels are applied
        in both cases.
        """
        try:
            async with self.writer(ref, expected, total) as writer:
                status = await writer.open()
                if status.offset:
                    await writer.restart()
                await _write_chunks(writer, chunks)
                await writer.commit(labels)
        except AlreadyExists:
            if labels:
                await self.set_labels(expected, labels)
            return False
        except BaseException:
            await self.abort(ref)
            raise
        return True


async def _write_chunks(writer: ContentWriter, chunks: AsyncIterable[bytes] | bytes) -> None:
    if isinstance(chunks, bytes):
        for start in range(0, len(chunks), READ_CHUNK):
            await writer.write(chunks[start : start + READ_CHUNK])
        return
    async for chunk in chunks:
        if chunk:
            await writer.write(chunk)
