"""Running a daemon's main coroutine on uvloop, libuv's event loop for asyncio."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like ``asyncio.run``, on uvloop: the proxies spend most of their time in the loop."""
    return uvloop.run(main)


async def until_signalled() -> None:
    """Return once the process gets SIGTERM or SIGINT (a daemon's orderly stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def reraise_if_cancelling(exc: BaseException) -> None:
    """Raise ``CancelledError`` if the current task is being cancelled.

    A gRPC call cut short by cancelling its task surfaces as a CANCELLED error, not as
    ``CancelledError``: code that catches the call's errors passes each through this, so
    that a cancelled loop really stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc
