"""Retrying a multi-op that lost a version race to another writer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import Unavailable
from ..zk import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    TransactionFailed,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


ATTEMPTS = 8


_RACES = (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError)


async def retry_races(attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``attempt`` again while it loses a version race; bounded, with backoff."""
    for n in range(ATTEMPTS):
        try:
            return await attempt()
        except TransactionFailed as exc:
            if not isinstance(exc.cause, _RACES):
                raise
            log.debug("retrying %s after %r", what, exc.cause)
            await asyncio.sleep(min(0.01 * 2**n, 0.5))
    raise Unavailable(f"{what}: too much concurrent change, try again")
