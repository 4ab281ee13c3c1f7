"""Running one process in a running task and collecting its output (containerd exec).

``exec_process`` is the whole round trip: FIFOs, Exec, Start, stdin written and closed,
stdout and stderr read while the process runs, its exit status, and the exec'd process
deleted again. Cancelling it (a timeout around it) kills the process and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ContainerdError, NotFound
from bismuth_agent.containerd.stdio import ProcessIO


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


async def _feed(
    client: ContainerdClient, io: ProcessIO, container_id: str, exec_id: str, data: bytes
) -> None:
    await io.write_stdin(data)
    await client.tasks.close_stdin(container_id, exec_id)


async def exec_process(
    client: ContainerdClient,
    container_id: str,
    process: Mapping[str, Any],
    fifo_dir: Path,
    *,
    stdin: bytes | None = None,
    exec_id: str | None = None,
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
        try:
            out, err, status = await asyncio.gather(
                io.stdout.read(), io.stderr.read(), client.tasks.wait(container_id, exec_id)
            )
        finally:
            if feeding is not None:
                await _settle(feeding)
        return ExecResult(status.code, out, err)
    finally:
        if added:
            await _remove(client, container_id, exec_id)
        await io.close()


async def _settle(feeding: asyncio.Future[None]) -> None:
    """Stop feeding stdin to a process that exited without reading all of it."""
    if not feeding.done():
        feeding.cancel()
    with contextlib.suppress(asyncio.CancelledError, ContainerdError, OSError):
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
