"""When each backend became routable at this frontend: the ``routed`` stage of a cold start.

A backend is routed once nginx's route table holds it (the controller stamps it when its
update went through) (see
:mod:`bismuth_agent.timeline` for the stages before). The times of the last :data:`KEPT`
backends are kept in memory and served on the admin address at ``GET /timeline``, as
``{"<container id>": {"routed": <wall-clock seconds>}}``.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from bismuth_core.layout import Backend

from .routing import RoutingTable

KEPT = 1024


class RouteTimes:
    """First time each backend became routable (since it last was not)."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._routed: frozenset[Backend] = frozenset()
        self._times: OrderedDict[Backend, float] = OrderedDict()

    def observe(self, table: RoutingTable) -> None:
        """``table`` now serves requests: stamp the backends it newly holds."""
        now = time.time()
        routed = frozenset(b for route in table.routes.values() for b in route.backends)
        for backend in routed - self._routed:
            self._times.pop(backend, None)
            self._times[backend] = now
        self._routed = routed
        while len(self._times) > self.kept:
            self._times.popitem(last=False)

    def as_json(self) -> dict[str, dict[str, float]]:
        return {str(b.container_id): {"routed": at} for b, at in self._times.items()}
