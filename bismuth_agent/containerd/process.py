"""Running one process in a running task and collecting its output (containerd exec).

``exec_process`` is the whole round trip: FIFOs, Exec, Start, stdin written and closed,
stdout and stderr read while the process runs, its exit status, and the exec'd process
deleted again. Cancelling it (a timeout around it) kills the process and cleans up. Memory
is bounded: stdin may be a stream of chunks, written as they come (if the stream raises,
the process is killed and the error is raised); stdout past ``max_stdout`` bytes raises
:class:`OutputTooLarge` (the process is killed); of stderr only the last ``STDERR_TAIL``
bytes are kept (the rest is read and dropped). A process that exits without reading all of
its stdin is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterable, Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ContainerdError, NotFound
from bismuth_agent.containerd.stdio import ProcessIO

STDERR_TAIL = 64 << 10
CHUNK = 64 << 10


class OutputTooLarge(Exception):
    """The process wrote more to stdout than the caller takes."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


Input = bytes | AsyncIterable[bytes]


async def _feed(
    client: ContainerdClient, io: ProcessIO, container_id: str, exec_id: str, data: Input
) -> None:
    try:
        await io.write_stdin(data)
    except BrokenPipeError:
        return  # the process closed its stdin: it wants no more
    await client.tasks.close_stdin(container_id, exec_id)


async def exec_process(
    client: ContainerdClient,
    container_id: str,
    process: Mapping[str, Any],
    fifo_dir: Path,
    *,
    stdin: Input | None = None,
    exec_id: str | None = None,
    max_stdout: int | None = None,
) -> ExecResult:
    """Run ``process`` (an OCI process object) in the container's task; wait for it."""
    exec_id = exec_id or f"exec-{uuid.uuid4().hex[:12]}"
    io = await ProcessIO.open(fifo_dir, exec_id, stdin=stdin is not None)
    added = False
    try:
        await client.tasks.exec(container_id, exec_id, process, io.stdio)
        added = True
        await client.tasks.start(container_id, exec_id)
        io.started()
        feeding = None
        if stdin is not None:
            feeding = asyncio.ensure_future(_feed(client, io, container_id, exec_id, stdin))
        outputs = asyncio.ensure_future(
            _all_or_none(
                _read_at_most(io.stdout, max_stdout),
                _read_tail(io.stderr, STDERR_TAIL),
                client.tasks.wait(container_id, exec_id),
            )
        )
        try:
            out, err, status = await _unless_feeding_fails(outputs, feeding)
        finally:
            if feeding is not None:
                await _settle(feeding)
        return ExecResult(status.code, out, err)
    finally:
        if added:
            await _remove(client, container_id, exec_id)
        await io.close()


async def _unless_feeding_fails(
    outputs: asyncio.Future[list[Any]], feeding: asyncio.Future[None] | None
) -> list[Any]:
    """The outputs, unless feeding stdin fails first (then its error, outputs cancelled)."""
    try:
        if feeding is not None:
            pending: set[asyncio.Future[Any]] = {outputs, feeding}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not outputs.done() and not feeding.cancelled() and feeding.exception():
                raise feeding.exception()  # type: ignore[misc]
        return await outputs
    except BaseException:
        outputs.cancel()
        with contextlib.suppress(BaseException):
            await outputs
        raise


async def _all_or_none(*steps: Awaitable[Any]) -> list[Any]:
    """Await every step; if one fails (or we are cancelled) the others are cancelled too."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _read_at_most(stream: asyncio.StreamReader, limit: int | None) -> bytes:
    """Everything up to end of file; :class:`OutputTooLarge` past ``limit`` bytes."""
    chunks, size = [], 0
    while chunk := await stream.read(CHUNK):
        size += len(chunk)
        if limit is not None and size > limit:
            raise OutputTooLarge(f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    """The last ``keep`` bytes up to end of file (the rest is read and dropped)."""
    tail = b""
    while chunk := await stream.read(CHUNK):
        tail = (tail + chunk)[-keep:]
    return tail


async def _settle(feeding: asyncio.Future[None]) -> None:
    """Stop feeding stdin to a process that exited without reading all of it. A failure of
    the feeding is not raised here: ``_unless_feeding_fails`` raised it if it mattered."""
    if not feeding.done():
        feeding.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await feeding


async def _remove(client: ContainerdClient, container_id: str, exec_id: str) -> None:
    """Kill (if still running) and delete an exec'd process; gone already is fine."""
    with contextlib.suppress(NotFound, ContainerdError):
        state = await client.tasks.get(container_id, exec_id)
        if state.status != "STOPPED":
            await client.tasks.kill(container_id, signal.SIGKILL, exec_id=exec_id)
            await client.tasks.wait(container_id, exec_id)
    with contextlib.suppress(NotFound, ContainerdError):
        await client.tasks.delete_process(container_id, exec_id)
