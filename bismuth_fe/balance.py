"""Least-outstanding-requests choice among a function's eligible backends.

:class:`OutstandingRequests` counts requests in flight per container (event-loop only, no
locking); :func:`choose_backend` picks the least loaded backend not yet tried, breaking ties
at random so that equal backends share the load.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

from bismuth_core.layout import Backend


def choose_backend(
    candidates: Sequence[Backend],
    outstanding: Mapping[uuid.UUID, int],
    exclude: Collection[Backend] = (),
    rng: random.Random | None = None,
) -> Backend | None:
    """The candidate with the fewest outstanding requests (ties at random), or ``None``."""
    remaining = [b for b in candidates if b not in exclude]
    if not remaining:
        return None
    least = min(outstanding.get(b.container_id, 0) for b in remaining)
    best = [b for b in remaining if outstanding.get(b.container_id, 0) == least]
    return (rng or random).choice(best)


class OutstandingRequests:
    """Requests in flight per container; read as a mapping by :func:`choose_backend`."""

    def __init__(self) -> None:
        self._counts: dict[uuid.UUID, int] = {}

    @property
    def counts(self) -> Mapping[uuid.UUID, int]:
        return self._counts

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    @contextmanager
    def hold(self, container_id: uuid.UUID) -> Iterator[None]:
        """Count one request to ``container_id`` for the duration of the block."""
        self._counts[container_id] = self._counts.get(container_id, 0) + 1
        try:
            yield
        finally:
            left = self._counts[container_id] - 1
            if left:
                self._counts[container_id] = left
            else:
                del self._counts[container_id]
