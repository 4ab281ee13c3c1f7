"""The frontend's routing state: applying the changed paths gives the table a full read gives."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import pytest

from bismuth_core import layout
from bismuth_core.layout import Backend, ContainerStatus, NodeAlive, ServingEndpoint
from bismuth_fe.routestate import RoutingState

F, G = uuid.UUID(int=1), uuid.UUID(int=2)
A = Backend("10.0.0.1", uuid.UUID(int=11))
B = Backend("10.0.0.2", uuid.UUID(int=12))
C = Backend("10.0.0.2", uuid.UUID(int=13))


class Tree:
    """Znodes by path, as the frontend's caches hold them."""

    def __init__(self) -> None:
        self.nodes: dict[str, bytes] = {}

    def put(self, path: str, data: bytes = b"") -> str:
        self.nodes[path] = data
        return path

    def drop(self, path: str) -> str:
        self.nodes.pop(path, None)
        return path

    def data(self, path: str) -> bytes | None:
        return self.nodes.get(path)

    def children(self, path: str) -> Iterable[str]:
        depth = path.count("/") + 1
        return {p.split("/")[depth] for p in self.nodes if p.startswith(path + "/")}


def status(backend: Backend, state: ContainerStatus, port: int | None = 8000) -> bytes:
    endpoint = ServingEndpoint("10.9.0.2", port) if port else None
    return layout.encode_status(state, endpoint)


def cluster() -> Tree:
    tree = Tree()
    for ip in ("10.0.0.1", "10.0.0.2"):
        tree.put(layout.node_path(ip), b"\x01")
        tree.put(layout.alive_path(ip), NodeAlive(1, 1, pool=f"10.{ip[-1]}.0.0/24").encode())
    tree.put(layout.function_path(F), b"{}")
    tree.put(layout.backends_path(F), layout.pack_backends([A, B]))
    tree.put(layout.route_path("f.test"), F.bytes)
    tree.put(layout.route_path("f2.test"), F.bytes)
    for b in (A, B):
        tree.put(layout.container_path(b.ip, b.container_id), F.bytes)
        tree.put(layout.status_path(b.ip, b.container_id), status(b, ContainerStatus.RUNNING))
    return tree


Change = Callable[[Tree], list[str]]
CHANGES: dict[str, Change] = {
    "a status turns Failed": lambda t: [
        t.put(layout.status_path(A.ip, A.container_id), status(A, ContainerStatus.FAILED))
    ],
    "a new function with its route": lambda t: [
        t.put(layout.function_path(G), b"{}"),
        t.put(layout.backends_path(G), layout.pack_backends([C])),
        t.put(layout.container_path(C.ip, C.container_id), G.bytes),
        t.put(layout.status_path(C.ip, C.container_id), status(C, ContainerStatus.RUNNING)),
        t.put(layout.route_path("g.test"), G.bytes),
    ],
    "a route moves to another function": lambda t: [
        t.put(layout.backends_path(G), layout.pack_backends([])),
        t.put(layout.route_path("f2.test"), G.bytes),
    ],
    "a route is deleted": lambda t: [t.drop(layout.route_path("f.test"))],
    "a node's agent is lost": lambda t: [t.drop(layout.alive_path(A.ip))],
    "a node is deprovisioned": lambda t: [
        t.drop(layout.alive_path(B.ip)),
        t.drop(layout.node_path(B.ip)),
    ],
    "an update adds a backend": lambda t: [
        t.put(layout.backends_path(F), layout.pack_backends([A, B, C])),
        t.put(layout.container_path(C.ip, C.container_id), F.bytes),
        t.put(layout.status_path(C.ip, C.container_id), status(C, ContainerStatus.RUNNING, None)),
    ],
    "a container and its status are removed": lambda t: [
        t.put(layout.backends_path(F), layout.pack_backends([A])),
        t.drop(layout.status_path(B.ip, B.container_id)),
        t.drop(layout.container_path(B.ip, B.container_id)),
    ],
    "a function is deleted": lambda t: [
        t.drop(layout.route_path("f.test")),
        t.drop(layout.route_path("f2.test")),
        t.drop(layout.backends_path(F)),
        t.drop(layout.function_path(F)),
    ],
    "a reservation changes (not routing)": lambda t: [
        t.put(layout.containers_path(A.ip), b'{"cpu": 1}')
    ],
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_applying_changed_paths_equals_reading_everything(change):
    tree = cluster()
    state = RoutingState.load(tree)
    before = state.table()
    paths = CHANGES[change](tree)
    hosts, nodes = state.apply(tree, paths)
    after = state.table_after(before, hosts, nodes)
    assert after == RoutingState.load(tree).table()
    for host, route in after.routes.items():
        if host not in hosts:
            assert route is before.routes[host]  # untouched routes are shared


def test_nothing_routed_changes_keeps_the_table():
    tree = cluster()
    state = RoutingState.load(tree)
    before = state.table()
    hosts, nodes = state.apply(tree, CHANGES["a reservation changes (not routing)"](tree))
    assert state.table_after(before, hosts, nodes) is before
