"""The controller: keeps nginx's route table equal to the routing table, without reloads.

Whenever the routing table changes, the hosts whose route differs from what nginx was last
given go over as one delta (``PATCH``). The whole table goes over (``PUT``, under a new table
id) at start, after every fresh load from ZooKeeper (a new session), and whenever nginx does
not hold the table the deltas were computed against: it restarted (its shared memory is
new), refused a delta, or was unreachable. Every ``sync_interval`` the controller checks
that nginx still holds that table with as many routes. nginx keeps serving with its last
table while the controller or ZooKeeper is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from .cache import RouteCache
from .control import ControlError, NginxControl, NginxRoute, TableMismatch, nginx_route
from .routing import RoutingTable
from .timeline import RouteTimes

log = logging.getLogger(__name__)

RETRY_DELAY = 0.5  # seconds before trying again after nginx could not be reached


def desired_routes(table: RoutingTable, agent_port: int) -> dict[str, NginxRoute]:
    """nginx's table for ``table``."""
    return {host: nginx_route(route, agent_port) for host, route in table.routes.items()}


def plan_delta(
    pushed: Mapping[str, NginxRoute], desired: Mapping[str, NginxRoute]
) -> tuple[dict[str, NginxRoute], list[str]]:
    """Routes to set and hosts to delete so that ``pushed`` becomes ``desired``."""
    changed = {h: r for h, r in desired.items() if pushed.get(h) != r}
    deleted = sorted(h for h in pushed if h not in desired)
    return changed, deleted


def delta_since(
    before: RoutingTable, after: RoutingTable, pushed: Mapping[str, NginxRoute], agent_port: int
) -> tuple[dict[str, NginxRoute], list[str]]:
    """What :func:`plan_delta` finds from ``pushed`` (made from ``before``) to ``after``,
    looking only at the routes that are not the very same objects in both: the cache
    rebuilds only the routes a change touched and shares the rest."""
    changed = {}
    for host, route in after.routes.items():
        if before.routes.get(host) is not route:
            wanted = nginx_route(route, agent_port)
            if pushed.get(host) != wanted:
                changed[host] = wanted
    deleted = sorted(h for h in pushed if h not in after.routes)
    return changed, deleted


@dataclass
class SyncState:
    """What the controller knows of nginx's table (for health and metrics)."""

    table: str | None = None  # id of the table nginx was last given in full
    routes: int = 0
    full_syncs: int = 0
    deltas: int = 0
    failures: int = 0
    last_error: str = ""
    synced_at: float | None = None  # monotonic time of the last successful push or check

    @property
    def synced(self) -> bool:
        return self.table is not None


class Controller:
    """Pushes the route cache's table into nginx; ``run()`` until cancelled."""

    def __init__(
        self, cache: RouteCache, nginx: NginxControl, agent_port: int, interval: float
    ) -> None:
        self.cache = cache
        self.nginx = nginx
        self.agent_port = agent_port
        self.interval = interval
        self.state = SyncState()
        self.routed = RouteTimes()  # when backends became routable in nginx (cold starts)
        self._pushed: dict[str, NginxRoute] | None = None
        self._pushed_table = RoutingTable()  # the routing table ``_pushed`` was made from
        self._reloads = -1
        self._changed = cache.subscribe()

    async def run(self) -> None:
        while True:
            changed = await self._wait()
            try:
                if changed or self._pushed is None or self._reloads != self.cache.reloads:
                    await self.sync()
                else:
                    await self.check()
            except ControlError as exc:
                self._lost(exc)
                await asyncio.sleep(RETRY_DELAY)

    async def _wait(self) -> bool:
        """Until the table changes (True) or the check interval passed (False)."""
        if not self._changed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval)
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    async def sync(self) -> None:
        """Bring nginx's table up to date: a delta if possible, else the whole table."""
        table = self.cache.table
        if self._pushed is None or self.state.table is None or self._reloads != self.cache.reloads:
            await self._replace(table)
            return
        changed, deleted = delta_since(self._pushed_table, table, self._pushed, self.agent_port)
        if not changed and not deleted:
            self._pushed_table = table
            return
        try:
            await self.nginx.update(self.state.table, changed, deleted)
        except TableMismatch as exc:
            log.warning("nginx does not hold the expected table (%s): sending all of it", exc)
            await self._replace(table)
            return
        pushed = self._pushed
        pushed.update(changed)
        for host in deleted:
            pushed.pop(host, None)
        self.routed.observe_change(self._pushed_table, table)
        self._pushed_table = table
        self.state.routes = len(pushed)
        self.state.deltas += 1
        self.state.synced_at = time.monotonic()
        log.debug("nginx: %d route(s) set, %d deleted", len(changed), len(deleted))

    async def check(self) -> None:
        """Resend everything if nginx lost or changed the table it was given."""
        status = await self.nginx.status()
        if status.table != self.state.table or status.routes != len(self._pushed or {}):
            log.warning(
                "nginx holds table %s with %d route(s), expected %s with %d: sending all of it",
                status.table,
                status.routes,
                self.state.table,
                len(self._pushed or {}),
            )
            await self._replace(self.cache.table)
            return
        self.state.synced_at = time.monotonic()

    async def _replace(self, routing: RoutingTable) -> None:
        reloads = self.cache.reloads
        desired = desired_routes(routing, self.agent_port)
        table = uuid.uuid4().hex
        status = await self.nginx.replace(table, desired)
        self._pushed, self._reloads, self._pushed_table = desired, reloads, routing
        self.routed.observe(routing)
        self.state.table, self.state.routes = table, status.routes
        self.state.full_syncs += 1
        self.state.synced_at = time.monotonic()
        log.info("nginx: route table %s loaded, %d route(s)", table, status.routes)

    def _lost(self, exc: ControlError) -> None:
        if self.state.table is not None or self.state.last_error != exc.message:
            log.warning("cannot update nginx: %s", exc.message)
        self._pushed = None
        self.state.table = None
        self.state.failures += 1
        self.state.last_error = exc.message
