"""Running a daemon's main coroutine on uvloop, libuv's event loop for asyncio."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like ``asyncio.run``, on uvloop: the proxies spend most of their time in the loop."""
    return uvloop.run(main)
