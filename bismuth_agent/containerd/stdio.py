"""FIFOs that carry a task's or exec'd process's stdio, used without blocking the event loop.

The runc shim opens the FIFOs we name in ``Stdio``: for stdout/stderr it opens a writer
(and returns from create/start only once it has), for stdin a reader in the background.
Reading: we open each output FIFO's read end plus a *keep* writer first, so our reader does
not see end-of-file before the shim has opened its writer; ``started()`` drops the keep
writers once create (task) or start (exec) has returned, after which end-of-file means the
process closed its output. Writing: stdin is opened for writing in a thread (opening a FIFO
blocks until both ends meet), the data written, and our end closed. The shim keeps a writer
of its own on the stdin FIFO, so the process sees end of input only after
``tasks.close_stdin()`` (containerd's CloseIO); ``process.exec_process`` does all of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterable
from pathlib import Path
from types import TracebackType

from bismuth_agent.containerd.types import Stdio


def _open_in_thread(path: Path, flags: int) -> asyncio.Future[int]:
    """open(2) that may block (a FIFO waiting for its other end), off the event loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def deliver(fd: int | None, error: OSError | None) -> None:
        if future.cancelled():
            if fd is not None:
                os.close(fd)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(fd)  # type: ignore[arg-type]

    def run() -> None:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, fd, None)

    threading.Thread(target=run, name=f"open {path.name}", daemon=True).start()
    return future


async def _reader(path: Path) -> tuple[asyncio.StreamReader, asyncio.ReadTransport, int]:
    """A StreamReader on the FIFO's read end, and a keep-alive writer fd."""
    loop = asyncio.get_running_loop()
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    return reader, transport, keep_fd


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(fd, writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(fd)
            continue
        view = view[written:]


class ProcessIO:
    """stdin (optional), stdout and stderr FIFOs for one process under ``directory``."""

    def __init__(self, directory: Path, name: str, stdin: bool) -> None:
        self.directory = directory
        self.paths = {
            stream: directory / f"{name}-{stream}"
            for stream in (("stdin",) if stdin else ()) + ("stdout", "stderr")
        }
        self.stdout: asyncio.StreamReader
        self.stderr: asyncio.StreamReader
        self._transports: list[asyncio.ReadTransport] = []
        self._keep: list[int] = []
        self._stdin: asyncio.Future[int] | None = None

    @classmethod
    async def open(cls, directory: Path, name: str, *, stdin: bool = False) -> ProcessIO:
        io = cls(directory, name, stdin)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            for path in io.paths.values():
                os.mkfifo(path, 0o600)
            io.stdout = await io._attach(io.paths["stdout"])
            io.stderr = await io._attach(io.paths["stderr"])
            if stdin:
                io._stdin = _open_in_thread(io.paths["stdin"], os.O_WRONLY)
        except BaseException:
            await io.close()
            raise
        return io

    async def _attach(self, path: Path) -> asyncio.StreamReader:
        reader, transport, keep = await _reader(path)
        self._transports.append(transport)
        self._keep.append(keep)
        return reader

    @property
    def stdio(self) -> Stdio:
        stdin = self.paths.get("stdin")
        return Stdio(
            stdin=str(stdin) if stdin else "",
            stdout=str(self.paths["stdout"]),
            stderr=str(self.paths["stderr"]),
        )

    def started(self) -> None:
        """The shim holds its writers now: from here on, end-of-file is the process's."""
        for fd in self._keep:
            os.close(fd)
        self._keep.clear()

    async def write_stdin(self, data: bytes | AsyncIterable[bytes]) -> None:
        """Send ``data`` (or each chunk of it as it comes) to the process's stdin and close
        our end (then ``close_stdin``)."""
        if self._stdin is None:
            raise RuntimeError("this ProcessIO has no stdin")
        fd = await self._stdin
        try:
            if isinstance(data, bytes):
                await _write_all(fd, data)
            else:
                async for chunk in data:
                    await _write_all(fd, chunk)
        finally:
            os.close(fd)
            self._stdin = None

    async def close(self) -> None:
        """Close every end and remove the FIFOs (safe to call more than once)."""
        self.started()
        if self._stdin is not None:
            await self._abandon_stdin(self._stdin)
            self._stdin = None
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _abandon_stdin(self, pending: asyncio.Future[int]) -> None:
        if not pending.done():
            # Meet the thread's blocked open with a reader of our own, so it returns.
            with contextlib.suppress(OSError):
                fd = os.open(self.paths["stdin"], os.O_RDONLY | os.O_NONBLOCK)
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    os.close(await pending)
                os.close(fd)
        elif not pending.cancelled() and pending.exception() is None:
            os.close(pending.result())

    async def __aenter__(self) -> ProcessIO:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
