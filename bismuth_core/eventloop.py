"""Running a daemon's main coroutine on uvloop, libuv's event loop for asyncio."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

# Seconds a thread holding the GIL runs before a waiting thread may take it. kazoo hands
# every ZooKeeper answer through its own threads to the loop; with Python's 5 ms a busy loop
# could hold an answer back for up to 5 ms at each of those hops.
SWITCH_INTERVAL = 0.0005


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like ``asyncio.run``, on uvloop: the proxies spend most of their time in the loop."""
    sys.setswitchinterval(SWITCH_INTERVAL)
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
