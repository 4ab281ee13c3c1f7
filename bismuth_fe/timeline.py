"""When each backend became routable at this frontend: the ``routed`` stage of a cold start.

A backend is routed once nginx's route table holds it (the controller stamps it when its
update went through) (see
:mod:`bismuth_agent.timeline` for the stages before). The times of the last :data:`KEPT`
backends are kept in memory and served on the admin address at ``GET /timeline``, as
``{"<container id>": {"routed": <wall-clock seconds>}}``.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Iterable

from bismuth_core.layout import Backend

from .routing import Route, RoutingTable

KEPT = 1024


class RouteTimes:
    """First time each backend became routable (since it last was not)."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._routed: Counter[Backend] = Counter()  # routes holding each routed backend
        self._times: OrderedDict[Backend, float] = OrderedDict()

    def observe(self, table: RoutingTable) -> None:
        """``table`` now serves requests (in full): stamp the backends it newly holds."""
        routed = Counter(b for route in table.routes.values() for b in route.backends)
        self._stamp(set(routed) - set(self._routed))
        self._routed = routed

    def observe_change(self, before: RoutingTable, after: RoutingTable) -> None:
        """``after`` replaced ``before`` by a delta: only routes that are not the very same
        objects in both are looked at."""
        changes: list[tuple[Route | None, Route | None]] = [
            (before.routes.get(host), route)
            for host, route in after.routes.items()
            if before.routes.get(host) is not route
        ]
        changes += [(old, None) for host, old in before.routes.items() if host not in after.routes]
        touched = {b for pair in changes for r in pair if r is not None for b in r.backends}
        was_routed = {b for b in touched if self._routed[b] > 0}
        for old, new in changes:
            self._count(old, -1)
            self._count(new, +1)
        self._stamp(b for b in touched - was_routed if self._routed[b] > 0)

    def _count(self, route: Route | None, step: int) -> None:
        for backend in dict.fromkeys(route.backends) if route is not None else ():
            self._routed[backend] += step
            if self._routed[backend] <= 0:
                del self._routed[backend]

    def _stamp(self, backends: Iterable[Backend]) -> None:
        now = time.time()
        for backend in backends:
            self._times.pop(backend, None)
            self._times[backend] = now
        while len(self._times) > self.kept:
            self._times.popitem(last=False)

    def as_json(self) -> dict[str, dict[str, float]]:
        return {str(b.container_id): {"routed": at} for b, at in self._times.items()}
