"""The routing table: for each hostname, the function and the backends that may take traffic.

Pure and immutable. :func:`build_table` turns a :class:`ClusterSnapshot` (routes, packed
backends, container status and serving endpoints, live nodes and their container pools, as
read from ZooKeeper by :mod:`.cache`) into a :class:`RoutingTable`; the controller pushes it
into nginx, and a change in ZooKeeper replaces the whole table at once.

Eligibility: a backend takes traffic only if its container's status is ``Running``. Among
those, backends on nodes whose agent is alive are preferred; if none of them is on a live
node, all ``Running`` ones are used (agents restart without their containers stopping, and a
connect failure moves on to the next one). A backend whose status carries an endpoint is
connected to straight; the others through their node's agent.
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from bismuth_core.layout import Backend, ContainerStatus, ServingEndpoint


@dataclass(frozen=True)
class ClusterSnapshot:
    """The ZooKeeper state routing depends on, at one moment."""

    routes: Mapping[str, uuid.UUID] = field(default_factory=dict)
    backends: Mapping[uuid.UUID, tuple[Backend, ...]] = field(default_factory=dict)
    statuses: Mapping[Backend, ContainerStatus] = field(default_factory=dict)
    live_nodes: frozenset[str] = frozenset()
    endpoints: Mapping[Backend, ServingEndpoint] = field(default_factory=dict)
    nodes: frozenset[str] = frozenset()  # provisioned nodes, alive or not
    pools: Mapping[str, str] = field(default_factory=dict)  # live node -> its container pool


@dataclass(frozen=True)
class Route:
    """Where requests for one hostname go: the function and its eligible backends."""

    function_id: uuid.UUID
    backends: tuple[Backend, ...]
    endpoints: Mapping[Backend, ServingEndpoint] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=dict)
    nodes: frozenset[str] = frozenset()
    pools: Mapping[str, str] = field(default_factory=dict)

    @property
    def serving_backends(self) -> int:
        """Distinct backends that currently receive traffic."""
        return len({b for r in self.routes.values() for b in r.backends})


def eligible_backends(
    backends: tuple[Backend, ...],
    statuses: Mapping[Backend, ContainerStatus],
    live_nodes: Container[str],
) -> tuple[Backend, ...]:
    """``Running`` backends, those on live nodes only unless none of them is."""
    running = tuple(
        b for b in dict.fromkeys(backends) if statuses.get(b) == ContainerStatus.RUNNING
    )
    on_live_nodes = tuple(b for b in running if b.ip in live_nodes)
    return on_live_nodes or running


def build_route(
    fid: uuid.UUID,
    backends: tuple[Backend, ...],
    statuses: Mapping[Backend, ContainerStatus],
    live_nodes: Container[str],
    endpoints: Mapping[Backend, ServingEndpoint],
) -> Route:
    """The route of a hostname of function ``fid`` (whose backends are ``backends``)."""
    eligible = eligible_backends(backends, statuses, live_nodes)
    return Route(fid, eligible, {b: endpoints[b] for b in eligible if b in endpoints})


def build_table(snapshot: ClusterSnapshot) -> RoutingTable:
    """The routing table for ``snapshot``; a route to an unknown function has no backends."""
    routes = {}
    eligible = {
        fid: eligible_backends(backends, snapshot.statuses, snapshot.live_nodes)
        for fid, backends in snapshot.backends.items()
    }
    for host, fid in snapshot.routes.items():
        backends = eligible.get(fid, ())
        endpoints = {b: snapshot.endpoints[b] for b in backends if b in snapshot.endpoints}
        routes[host] = Route(fid, backends, endpoints)
    return RoutingTable(routes, snapshot.nodes, dict(snapshot.pools))
