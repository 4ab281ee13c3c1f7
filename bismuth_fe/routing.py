"""The routing table: for each hostname, the function and the backends that may take traffic.

Pure and immutable. :func:`build_table` turns a :class:`ClusterSnapshot` (routes, packed
backends, container status, live nodes, as read from ZooKeeper by :mod:`.cache`) into a
:class:`RoutingTable`; requests only ever read a table, and a change in ZooKeeper replaces
the whole table at once.

Eligibility: a backend takes traffic only if its container's status is ``Running``. Among
those, backends on nodes whose agent is alive are preferred; if none of them is on a live
node, all ``Running`` ones are used (a connect failure then moves on to the next one).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from bismuth_core.errors import NotFound, Unavailable
from bismuth_core.layout import Backend, ContainerStatus


@dataclass(frozen=True)
class ClusterSnapshot:
    """The ZooKeeper state routing depends on, at one moment."""

    routes: Mapping[str, uuid.UUID] = field(default_factory=dict)
    backends: Mapping[uuid.UUID, tuple[Backend, ...]] = field(default_factory=dict)
    statuses: Mapping[Backend, ContainerStatus] = field(default_factory=dict)
    live_nodes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Route:
    """Where requests for one hostname go: the function and its eligible backends."""

    function_id: uuid.UUID
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=dict)

    def lookup(self, host: str) -> Route:
        """The route for ``host``; :class:`NotFound` or :class:`Unavailable` if none serves."""
        route = self.routes.get(host)
        if route is None:
            raise NotFound(f"no function is routed for host {host!r}")
        if not route.backends:
            raise Unavailable(
                f"function {route.function_id} (host {host!r}) has no running container"
            )
        return route

    @property
    def serving_backends(self) -> int:
        """Distinct backends that currently receive traffic."""
        return len({b for r in self.routes.values() for b in r.backends})


def eligible_backends(
    backends: tuple[Backend, ...],
    statuses: Mapping[Backend, ContainerStatus],
    live_nodes: frozenset[str],
) -> tuple[Backend, ...]:
    """``Running`` backends, those on live nodes only unless none of them is."""
    running = tuple(
        b for b in dict.fromkeys(backends) if statuses.get(b) == ContainerStatus.RUNNING
    )
    on_live_nodes = tuple(b for b in running if b.ip in live_nodes)
    return on_live_nodes or running


def build_table(snapshot: ClusterSnapshot) -> RoutingTable:
    """The routing table for ``snapshot``; a route to an unknown function has no backends."""
    eligible = {
        fid: eligible_backends(backends, snapshot.statuses, snapshot.live_nodes)
        for fid, backends in snapshot.backends.items()
    }
    return RoutingTable(
        {host: Route(fid, eligible.get(fid, ())) for host, fid in snapshot.routes.items()}
    )


def normalize_host(value: str | None) -> str | None:
    """The hostname of a ``Host`` header: port stripped, lowercase, no trailing dot.

    ``None`` when there is no usable host (missing or empty header).
    """
    if value is None:
        return None
    host = value.strip()
    if host.startswith("["):  # IPv6 literal, [addr]:port
        end = host.find("]")
        host = host[1:end] if end > 0 else host
    else:
        name, sep, port = host.rpartition(":")
        if sep and (port == "" or port.isdigit()):
            host = name
    host = host.lower().removesuffix(".")
    return host or None
