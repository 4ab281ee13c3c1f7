"""The routing state mirrored from ZooKeeper, updated by the paths that changed.

:class:`RoutingState` holds what :mod:`.routing` needs (routes, each function's backends,
container statuses and endpoints, provisioned nodes and live nodes' pools) plus the
indexes that lead from a changed znode to the hostnames it affects: a status to its
container's function, a function to its hostnames, a node's liveness to the functions
with containers on it. :meth:`RoutingState.apply` re-reads only the znodes whose paths
changed and rebuilds only the routes of the hostnames they affect, so a change costs the
same with ten functions or ten thousand; :meth:`RoutingState.load` reads everything (at
start and after each new session).

It reads through a :class:`Reader` (the caches of :mod:`.cache`), never ZooKeeper itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from bismuth_core import layout
from bismuth_core.layout import Backend, ContainerStatus, ServingEndpoint

from .routing import Route, RoutingTable, build_route


class Reader(Protocol):
    def data(self, path: str) -> bytes | None:
        """The znode's data as cached; ``None`` if it is not (or not yet) there."""
        ...

    def children(self, path: str) -> Iterable[str]: ...


@dataclass
class RoutingState:
    routes: dict[str, uuid.UUID] = field(default_factory=dict)
    backends: dict[uuid.UUID, tuple[Backend, ...]] = field(default_factory=dict)
    statuses: dict[Backend, ContainerStatus] = field(default_factory=dict)
    endpoints: dict[Backend, ServingEndpoint] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # provisioned nodes
    pools: dict[str, str] = field(default_factory=dict)  # live node -> pool ("" if none)
    hosts_of: dict[uuid.UUID, set[str]] = field(default_factory=dict)
    function_of: dict[Backend, uuid.UUID] = field(default_factory=dict)
    functions_on: dict[str, set[uuid.UUID]] = field(default_factory=dict)

    # --- reading ------------------------------------------------------------------------

    @classmethod
    def load(cls, reader: Reader) -> RoutingState:
        """Everything the reader holds."""
        state = cls()
        for host in reader.children(layout.ROUTES):
            state._read_route(reader, host)
        for name in reader.children(layout.FUNCTIONS):
            fid = layout.parse_uuid(name)
            if fid is not None:
                state._read_backends(reader, fid)
        for name in reader.children(layout.NODES):
            ip = layout.parse_ipv4(name)
            if ip is None:
                continue
            state._read_node(reader, ip)
            for child in reader.children(layout.containers_path(ip)):
                cid = layout.parse_uuid(child)
                if cid is not None:
                    state._read_status(reader, Backend(ip, cid))
        return state

    def apply(self, reader: Reader, paths: Iterable[str]) -> tuple[set[str], bool]:
        """Re-read the znodes at ``paths``: the hostnames whose routes may have changed, and
        whether the set of nodes or their pools did."""
        hosts: set[str] = set()
        nodes_changed = False
        for path in paths:
            parts = path.split("/")[1:]
            if parts[0] == layout.ROUTES[1:] and len(parts) == 2:
                self._read_route(reader, parts[1])
                hosts.add(parts[1])
            elif parts[0] == layout.FUNCTIONS[1:] and len(parts) in (2, 3):
                fid = layout.parse_uuid(parts[1])
                if fid is not None and (len(parts) == 2 or parts[2] == "backends"):
                    self._read_backends(reader, fid)
                    hosts |= self.hosts_of.get(fid, set())
            elif parts[0] == layout.NODES[1:] and len(parts) > 1:
                changed, node_hosts = self._apply_node(reader, parts[1:])
                nodes_changed |= changed
                hosts |= node_hosts
        return hosts, nodes_changed

    def _apply_node(self, reader: Reader, parts: list[str]) -> tuple[bool, set[str]]:
        ip = layout.parse_ipv4(parts[0])
        if ip is None:
            return False, set()
        if len(parts) == 1 or parts[1:] == ["alive"]:
            before = (ip in self.names, self.pools.get(ip))
            self._read_node(reader, ip)
            if before == (ip in self.names, self.pools.get(ip)):
                return False, set()
            return True, self._hosts_of_functions(self.functions_on.get(ip, set()))
        cid = layout.parse_uuid(parts[2]) if len(parts) >= 3 and parts[1] == "container" else None
        if cid is None:
            return False, set()  # the container znode's own data: reservations, not routing
        backend = Backend(ip, cid)
        self._read_status(reader, backend)
        fid = self.function_of.get(backend)
        return False, set(self.hosts_of.get(fid, ())) if fid else set()

    def _hosts_of_functions(self, fids: Iterable[uuid.UUID]) -> set[str]:
        return {host for fid in fids for host in self.hosts_of.get(fid, ())}

    def _read_route(self, reader: Reader, host: str) -> None:
        old = self.routes.pop(host, None)
        if old is not None:
            self.hosts_of.get(old, set()).discard(host)
        fid = layout.decode_route(reader.data(layout.route_path(host)))
        if fid is not None:
            self.routes[host] = fid
            self.hosts_of.setdefault(fid, set()).add(host)

    def _read_backends(self, reader: Reader, fid: uuid.UUID) -> None:
        for backend in self.backends.pop(fid, ()):
            self.function_of.pop(backend, None)
            self.functions_on.get(backend.ip, set()).discard(fid)
        raw = reader.data(layout.backends_path(fid))
        try:
            backends = layout.unpack_backends(raw)
        except ValueError:
            backends = ()  # malformed: the function routes nowhere
        if raw is None:
            return
        self.backends[fid] = backends
        for backend in backends:
            self.function_of[backend] = fid
            self.functions_on.setdefault(backend.ip, set()).add(fid)

    def _read_node(self, reader: Reader, ip: str) -> None:
        if reader.data(layout.node_path(ip)) is None:
            self.names.discard(ip)
        else:
            self.names.add(ip)
        alive = reader.data(layout.alive_path(ip))
        if alive is None:
            self.pools.pop(ip, None)
        else:
            self.pools[ip] = layout.NodeAlive.decode(alive).pool

    def _read_status(self, reader: Reader, backend: Backend) -> None:
        raw = reader.data(layout.status_path(backend.ip, backend.container_id))
        if raw is None:
            self.statuses.pop(backend, None)
            self.endpoints.pop(backend, None)
            return
        self.statuses[backend] = layout.decode_status(raw)
        endpoint = layout.decode_endpoint(raw)
        if endpoint is None:
            self.endpoints.pop(backend, None)
        else:
            self.endpoints[backend] = endpoint

    # --- tables ---------------------------------------------------------------------------

    def route(self, host: str) -> Route | None:
        fid = self.routes.get(host)
        if fid is None:
            return None
        return build_route(
            fid, self.backends.get(fid, ()), self.statuses, self.pools.keys(), self.endpoints
        )

    def table(self) -> RoutingTable:
        routes = {h: r for h in self.routes if (r := self.route(h)) is not None}
        return RoutingTable(
            routes, frozenset(self.names), {i: p for i, p in self.pools.items() if p}
        )

    def table_after(self, old: RoutingTable, hosts: Iterable[str], nodes: bool) -> RoutingTable:
        """``old`` with the routes of ``hosts`` rebuilt (and the nodes, if ``nodes``);
        ``old`` itself when nothing in it changed."""
        updates = {host: self.route(host) for host in hosts}
        changed = {h: r for h, r in updates.items() if old.routes.get(h) != r}
        if not changed and not nodes:
            return old
        routes = dict(old.routes)
        for host, route in changed.items():
            if route is None:
                routes.pop(host, None)
            else:
                routes[host] = route
        if not nodes:
            return RoutingTable(routes, old.nodes, old.pools)
        pools = {i: p for i, p in self.pools.items() if p}
        return RoutingTable(routes, frozenset(self.names), pools)
