"""The ``local`` backend: one group's data on this host's disk.

Layout under ``<root>/<group>/``: ``data.sqlite3`` holds the key/value pairs, the blob index
(key → size) and the group's usage counters; ``blobs/<sha256 of key>`` holds each blob's
content; ``tmp/`` holds blobs being received. SQLite runs in WAL mode with
``synchronous=FULL``, so a committed write survives a crash or power loss.

A blob write streams into ``tmp/``, fsyncs it, then inside one ``BEGIN IMMEDIATE``
transaction checks existence and quota, renames the file over ``blobs/<hash>``, fsyncs the
directory and commits. Several providers of one group on one host (one per container)
share the files; SQLite's lock serialises their writes, so quota checks are exact. A reader
keeps the file it opened: it sees the old content or the new, never a mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from bismuth_core.errors import Conflict, NotFound

from .base import BlobStream, QuotaExceeded, Quotas, WriteMode, spool

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blob (key TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage (kind TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO usage VALUES
    ('kv', (SELECT COALESCE(SUM(LENGTH(CAST(key AS BLOB)) + LENGTH(value)), 0) FROM kv)),
    ('blob', (SELECT COALESCE(SUM(size), 0) FROM blob));
"""
READ_CHUNK = 256 << 10


class LocalStorage:
    def __init__(self, root: Path, group: str, quotas: Quotas) -> None:
        self.dir = Path(root) / group
        self.quotas = quotas
        for sub in ("blobs", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(
            self.dir / "data.sqlite3", isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    async def _run(self, work: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work()

        return await asyncio.to_thread(locked)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _used(self, kind: str) -> int:
        row = self._db.execute("SELECT bytes FROM usage WHERE kind = ?", (kind,)).fetchone()
        return int(row[0])

    def _charge(self, kind: str, delta: int) -> None:
        """Add ``delta`` bytes to ``kind``'s usage, refusing growth past its quota."""
        quota = getattr(self.quotas, kind)
        used = self._used(kind)
        if delta > 0 and quota is not None and used + delta > quota:
            raise QuotaExceeded(kind, used, delta, quota)
        self._db.execute("UPDATE usage SET bytes = bytes + ? WHERE kind = ?", (delta, kind))

    # --- key/value ------------------------------------------------------------------------

    async def kv_get(self, key: str) -> bytes:
        def get() -> bytes:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise NotFound(f"no value for key {key!r}")
            return bytes(row[0])

        return await self._run(get)

    async def kv_set(self, key: str, value: bytes) -> None:
        size = len(key.encode()) + len(value)

        def put() -> None:
            with self._write() as db:
                row = db.execute(
                    "SELECT LENGTH(CAST(key AS BLOB)) + LENGTH(value) FROM kv WHERE key = ?",
                    (key,),
                ).fetchone()
                self._charge("kv", size - (row[0] if row else 0))
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

        await self._run(put)

    async def kv_delete(self, key: str) -> None:
        def delete() -> None:
            with self._write() as db:
                row = db.execute(
                    "SELECT LENGTH(CAST(key AS BLOB)) + LENGTH(value) FROM kv WHERE key = ?",
                    (key,),
                ).fetchone()
                if row is None:
                    raise NotFound(f"no value for key {key!r}")
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
                self._charge("kv", -row[0])

        await self._run(delete)

    # --- blobs ------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.dir / "blobs" / hashlib.sha256(key.encode()).hexdigest()

    def _blob_size(self, key: str) -> int | None:
        row = self._db.execute("SELECT size FROM blob WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    async def blob_list(self, prefix: str, after: str, limit: int) -> list[str]:
        def listing() -> list[str]:
            rows = self._db.execute(
                "SELECT key FROM blob WHERE key > ? AND key >= ? "
                "AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
                (after, prefix, len(prefix), prefix, limit),
            )
            return [row[0] for row in rows]

        return await self._run(listing)

    async def blob_read(self, key: str) -> BlobStream:
        def open_blob() -> BinaryIO:
            if self._blob_size(key) is None:
                raise NotFound(f"no blob {key!r}")
            try:
                return open(self._path(key), "rb")
            except FileNotFoundError:
                raise NotFound(f"no blob {key!r}") from None

        handle = await self._run(open_blob)
        size = os.fstat(handle.fileno()).st_size
        return BlobStream(size, _chunks(handle))

    async def blob_size(self, key: str) -> int:
        size = await self._run(lambda: self._blob_size(key))
        if size is None:
            raise NotFound(f"no blob {key!r}")
        return size

    async def blob_write(
        self, key: str, body: AsyncIterator[bytes], mode: WriteMode, max_bytes: int
    ) -> int:
        await self._run(lambda: self._check_mode(key, mode))  # fail early, before the body
        fd, name = tempfile.mkstemp(dir=self.dir / "tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                size = await spool(body, out, max_bytes)
                await asyncio.to_thread(_sync, out)
            await self._run(lambda: self._commit_blob(key, tmp, size, mode))
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def _check_mode(self, key: str, mode: WriteMode) -> int | None:
        old = self._blob_size(key)
        if mode == "create" and old is not None:
            raise Conflict(f"blob {key!r} exists; replace it with PUT")
        if mode == "replace" and old is None:
            raise NotFound(f"no blob {key!r}; create it with POST")
        return old

    def _commit_blob(self, key: str, tmp: Path, size: int, mode: WriteMode) -> None:
        with self._write() as db:
            old = self._check_mode(key, mode)
            self._charge("blob", size - (old or 0))
            os.replace(tmp, self._path(key))
            _sync_dir(self._path(key).parent)
            db.execute("INSERT OR REPLACE INTO blob VALUES (?, ?)", (key, size))

    async def blob_delete(self, key: str) -> None:
        def delete() -> None:
            with self._write() as db:
                size = self._blob_size(key)
                if size is None:
                    raise NotFound(f"no blob {key!r}")
                db.execute("DELETE FROM blob WHERE key = ?", (key,))
                self._charge("blob", -size)
                self._path(key).unlink(missing_ok=True)

        await self._run(delete)

    async def usage(self) -> Quotas:
        return await self._run(lambda: Quotas(kv=self._used("kv"), blob=self._used("blob")))

    async def close(self) -> None:
        await self._run(self._db.close)


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk
    finally:
        handle.close()
