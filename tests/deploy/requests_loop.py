"""A bounded request loop against a frontend: what a user sees while operators work.

``async with RequestLoop(url, host) as loop:`` keeps ``concurrency`` clients sending GETs
with that ``Host`` header, each at most one per ``pace`` seconds (a steady load that leaves
the machine's cores to what is being tested), until the block ends (or ``max_seconds``
passed, or ``max_requests`` were sent); then ``loop.report`` counts what they got.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp


@dataclass
class LoopReport:
    sent: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    containers: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        return f"{self.sent} sent, {self.failed} failed {dict(self.failures)}"


class RequestLoop:
    def __init__(
        self,
        url: str,
        host: str,
        concurrency: int = 4,
        pace: float = 0.02,
        max_seconds: float = 600.0,
        max_requests: int = 200_000,
    ) -> None:
        self.url, self.host = url, host
        self.concurrency, self.pace = concurrency, pace
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        self.report = LoopReport()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RequestLoop:
        timeout = aiohttp.ClientTimeout(total=10)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()

    def _going(self) -> bool:
        return (
            not self._stop.is_set()
            and time.monotonic() < self.deadline
            and self.report.sent < self.max_requests
        )

    async def _client(self) -> None:
        assert self._session is not None
        while self._going():
            began = time.monotonic()
            self.report.sent += 1
            try:
                async with self._session.get(self.url, headers={"Host": self.host}) as response:
                    await response.read()
                    if response.status != 200:
                        self._fail(f"status {response.status}")
                    else:
                        self.report.containers[response.headers["X-Bismuth-Container-ID"]] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._fail(type(exc).__name__)
            # pacing, not waiting: the stop event ends the pause at once
            with contextlib.suppress(TimeoutError):
                left = self.pace - (time.monotonic() - began)
                await asyncio.wait_for(self._stop.wait(), max(left, 0.0))

    def _fail(self, why: str) -> None:
        self.report.failed += 1
        self.report.failures[why] += 1
