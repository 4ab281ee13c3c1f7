"""Group commit: multi-ops that several tasks send close together go to ZooKeeper as one.

Every multi-op costs ZooKeeper a transaction (a proposal, a log write, a reply) and kazoo a
request through its threads, whatever its size. A control plane placing many functions at
once sends many small multi-ops; :class:`GroupCommit` queues them and sends what has
queued as one multi-op, the ops of each caller after those of the callers before it, in
the order the callers came. ZooKeeper applies a multi-op's ops one after another, so a
caller whose ops build on an earlier caller's (the next version of a node's reservation)
sees them applied first, as if each had been sent alone in that order.

Each caller still gets its own answer. A multi-op is all or nothing, so when one caller's
op fails, the whole group was rolled back: that caller gets the failure (the index of its
own op that failed), so do the callers after it whose ops touch a znode that a failed
caller's ops write (they built on a write that did not happen: a lost race, to retry), and
every other caller's ops are sent again, without it. One caller's bad op never costs
another caller its change, and nothing of the failed callers is left behind.

A group is sent as soon as the event loop gets to it (no timer: a caller alone waits for
nothing), with at most ``in_flight`` groups awaiting their answers at once; callers that
come meanwhile queue for the next group, so groups grow with the load. A group stays under
``max_bytes`` (ZooKeeper refuses a request past its ``jute.maxbuffer``, 1 MiB by default);
a caller bigger than that alone is sent on its own.

``observe``, if given, hears of each group answered: how many callers it carried and the
seconds from its sending to ZooKeeper's answer (the API's metrics: is ZooKeeper the wait?).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .zk import BadVersionError, Op, TransactionFailed, ZooKeeper, transaction_failure

log = logging.getLogger(__name__)

MAX_BYTES = 512 * 1024  # of op data and paths in one group: half of ZooKeeper's default limit
IN_FLIGHT = 2


@dataclass
class _Caller:
    ops: list[Op]
    future: asyncio.Future[list[Any]]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(len(op.data) + len(op.path) + 16 for op in self.ops)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _written(ops: Sequence[Op]) -> set[str]:
    return {op.path for op in ops if op.kind != "check"}


class GroupCommit:
    """Multi-ops of one session, sent in groups (see the module's docstring)."""

    def __init__(
        self,
        zk: ZooKeeper,
        *,
        max_bytes: int = MAX_BYTES,
        in_flight: int = IN_FLIGHT,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.zk = zk
        self.max_bytes = max_bytes
        self.observe = observe
        self._queue: deque[_Caller] = deque()
        self._slots = asyncio.Semaphore(in_flight)
        self._flusher: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        """What :meth:`ZooKeeper.commit` gives for ``ops`` (their results, or
        :class:`TransactionFailed` with the index of the op of ``ops`` that failed)."""
        if not ops:
            return await self.zk.commit(ops)
        caller = _Caller(list(ops), asyncio.get_running_loop().create_future())
        self._queue.append(caller)
        self._kick()
        return await caller.future

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._queue:
            await self._slots.acquire()
            group = self._take()
            if not group:
                self._slots.release()
                continue
            try:
                sent = time.monotonic()
                answer = self.zk.send([op for caller in group for op in caller.ops])
            except BaseException as exc:  # not connected, or an op it cannot send
                self._slots.release()
                for caller in group:
                    caller.fail(exc)
                continue
            task = asyncio.create_task(self._settle(group, answer, sent))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _take(self) -> list[_Caller]:
        """The next group: queued callers in order, up to ``max_bytes`` (at least one)."""
        group: list[_Caller] = []
        size = 0
        while self._queue:
            caller = self._queue[0]
            if caller.future.done():  # cancelled while it waited
                self._queue.popleft()
                continue
            if group and size + caller.size > self.max_bytes:
                break
            group.append(self._queue.popleft())
            size += caller.size
        return group

    async def _settle(self, group: list[_Caller], answer: Any, sent: float) -> None:
        try:
            results: list[Any] = await answer
        except BaseException as exc:  # unreachable, timed out: nobody knows more
            for caller in group:
                caller.fail(exc)
            return
        finally:
            self._slots.release()
        if self.observe is not None:
            self.observe(len(group), time.monotonic() - sent)
        try:
            again = self._answer(group, results)
        except Exception as exc:  # answers it cannot read: every caller hears of it
            for caller in group:
                caller.fail(exc)
            return
        if again:
            self._queue.extendleft(reversed(again))
            self._kick()

    def _answer(self, group: list[_Caller], results: list[Any]) -> list[_Caller]:
        """Give each caller its results or its failure; the callers to send again."""
        offset = 0
        parts = []
        for caller in group:
            parts.append(results[offset : offset + len(caller.ops)])
            offset += len(caller.ops)
        failed_at = next(
            (i for i, part in enumerate(parts) if transaction_failure(part) is not None), None
        )
        if failed_at is None:
            for caller, part in zip(group, parts, strict=True):
                if not caller.future.done():
                    caller.future.set_result(part)
            return []
        failure = transaction_failure(parts[failed_at])
        assert failure is not None
        group[failed_at].fail(failure)
        lost = _written(group[failed_at].ops)
        again = group[:failed_at]
        for caller in group[failed_at + 1 :]:
            shared = next((i for i, op in enumerate(caller.ops) if op.path in lost), None)
            if shared is None:
                again.append(caller)
                continue
            # it built on a write that was rolled back: a lost race, retried by its caller
            caller.fail(TransactionFailed(BadVersionError(), shared))
            lost |= _written(caller.ops)
        log.debug("group of %d rolled back by op of caller %d", len(group), failed_at)
        return [caller for caller in again if not caller.future.done()]
