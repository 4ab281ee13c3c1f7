"""Each container's stdout and stderr in one size-capped file, and reading it back.

containerd's shim hands the container's output to ``bismuth-logger``
(:mod:`bismuth_agent.logger`, a ``binary://`` stdio URI; :meth:`LogStore.install_logger`
writes it as a standalone script run by ``python -I -S``: stdlib only, ~8 MB and ~20 ms to
start per container, about half of a Python with its site-packages; a shell wrapper tells
the shim it is ready before Python starts, so that start is not part of the task's), which
appends it to
``<log_dir>/<cid>.log`` and enforces the cap as it writes: before the file passes half the
cap it becomes ``<cid>.log.1`` and a new one starts, so the two together stay under the cap
however fast a container writes, and output keeps flowing while the agent restarts. The
agent adds its own lines about the container (why it failed to start, for example) prefixed
``bismuthd:``. Containers started with a ``file://`` URI (by older agents) are capped like
logrotate's copytruncate by :meth:`LogStore.enforce_cap`, which the agent calls every few
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from . import logger
from .files import write_atomically

FOLLOW_POLL = 0.2  # seconds between size checks while following


LOGGER = "bismuth-logger"


class LogStore:
    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.logger: Path | None = None

    def install_logger(self, directory: Path) -> None:
        """Write the logger program the shim runs into ``directory`` (this version's; tasks
        already running keep the one they started with)."""
        program = directory / f"{LOGGER}.py"
        write_atomically(program, Path(logger.__file__).read_text())
        path = directory / LOGGER
        write_atomically(path, _wrapper(program))
        path.chmod(0o755)
        self.logger = path

    def path(self, cid: uuid.UUID) -> Path:
        return self.dir / f"{cid}.log"

    def uri(self, cid: uuid.UUID) -> str:
        """The stdio URI containerd's shim hands the container's output to."""
        if self.logger is None:
            raise RuntimeError("install_logger() first")
        query = urlencode({"path": str(self.path(cid)), "max": str(self.max_bytes)})
        return f"binary://{quote(str(self.logger))}?{query}"

    def prepare(self, cid: uuid.UUID) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path(cid).touch(exist_ok=True)

    def note(self, cid: uuid.UUID, message: str) -> None:
        """Append one line of the agent's own about this container."""
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.path(cid), "a", encoding="utf-8") as fh:
            fh.write(f"bismuthd: {stamp} {message}\n")

    def enforce_cap(self, cid: uuid.UUID) -> None:
        current = self.path(cid)
        try:
            size = current.stat().st_size
        except FileNotFoundError:
            return
        if size > self.max_bytes // 2:
            shutil.copyfile(current, current.with_suffix(".log.1"))
            os.truncate(current, 0)

    def read(self, cid: uuid.UUID) -> bytes:
        """Everything kept, oldest first."""
        chunks = []
        for path in (self.path(cid).with_suffix(".log.1"), self.path(cid)):
            with contextlib.suppress(FileNotFoundError):
                chunks.append(path.read_bytes())
        return b"".join(chunks)

    def remove(self, cid: uuid.UUID) -> None:
        for path in (self.path(cid), self.path(cid).with_suffix(".log.1")):
            path.unlink(missing_ok=True)

    async def follow(self, cid: uuid.UUID, alive: Callable[[], bool]) -> AsyncIterator[str]:
        """Lines as they are written, starting with what is kept; ends when ``alive()`` is
        false and everything written has been read."""
        for line in self.read(cid).decode(errors="replace").splitlines():
            yield line
        offset = _size(self.path(cid))
        pending: bytes = b""
        while True:
            size = _size(self.path(cid))
            if size < offset:  # truncated by the cap
                offset = 0
            if size > offset:
                with open(self.path(cid), "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(size - offset)
                offset += len(data)
                pending += data
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield raw.decode(errors="replace")
            elif not alive():
                if pending:
                    yield pending.decode(errors="replace")
                return
            else:
                await asyncio.sleep(FOLLOW_POLL)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wrapper(program: Path) -> str:
    """The program the shim runs: it closes the ready pipe (descriptor 5) at once, then
    becomes the Python logger on the output pipes (descriptors 3 and 4)."""
    python, script = shlex.quote(sys.executable), shlex.quote(str(program))
    return f'#!/bin/sh\nexec 5>&-\nexec {python} -I -S {script} "$@" ready closed\n'
