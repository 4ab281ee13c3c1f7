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
