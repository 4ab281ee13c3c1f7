"""The routing table and what nginx is given of it: pure, table-driven."""

from __future__ import annotations

import uuid

import pytest

from bismuth_core.layout import Backend, ContainerStatus, ServingEndpoint
from bismuth_fe.control import nginx_route
from bismuth_fe.routing import ClusterSnapshot, Route, RoutingTable, build_table, eligible_backends

RUNNING, STARTING, FAILED = (
    ContainerStatus.RUNNING,
    ContainerStatus.STARTING,
    ContainerStatus.FAILED,
)
A = Backend("10.0.0.1", uuid.UUID(int=1))
B = Backend("10.0.0.2", uuid.UUID(int=2))
C = Backend("10.0.0.3", uuid.UUID(int=3))
FID = uuid.UUID(int=100)


@pytest.mark.parametrize(
    ("statuses", "live", "expected"),
    [
        ({A: RUNNING, B: RUNNING}, {"10.0.0.1", "10.0.0.2"}, (A, B)),
        ({A: RUNNING, B: STARTING}, {"10.0.0.1", "10.0.0.2"}, (A,)),
        ({A: FAILED, B: STARTING}, {"10.0.0.1", "10.0.0.2"}, ()),
        ({A: RUNNING}, {"10.0.0.1"}, (A,)),  # B has no status znode yet
        ({A: RUNNING, B: RUNNING}, {"10.0.0.2"}, (B,)),  # live nodes preferred
        ({A: RUNNING, B: RUNNING}, set(), (A, B)),  # none live: Running ones anyway
        ({A: STARTING, B: RUNNING}, {"10.0.0.1"}, (B,)),  # Running beats live
    ],
)
def test_eligible_backends(statuses, live, expected):
    assert eligible_backends((A, B), statuses, frozenset(live)) == expected


def test_eligible_backends_ignores_duplicates():
    assert eligible_backends((A, A), {A: RUNNING}, frozenset({A.ip})) == (A,)


def test_build_table_maps_every_host_of_a_function():
    other = uuid.UUID(int=200)
    endpoint = ServingEndpoint("10.160.0.2", 8000)
    table = build_table(
        ClusterSnapshot(
            routes={"a.test": FID, "www.a.test": FID, "b.test": other, "gone.test": uuid.uuid4()},
            backends={FID: (A, B), other: (C,)},
            statuses={A: RUNNING, B: RUNNING, C: STARTING},
            live_nodes=frozenset({A.ip, B.ip, C.ip}),
            endpoints={A: endpoint, C: ServingEndpoint("10.160.1.2", 8000)},
        )
    )
    assert table.routes["a.test"] == table.routes["www.a.test"]
    assert table.routes["a.test"] == Route(FID, (A, B), {A: endpoint})
    assert table.routes["b.test"] == Route(other, (), {})  # C is not Running
    assert table.routes["gone.test"].backends == ()  # a function that is not (or no longer) there
    assert "c.test" not in table.routes
    assert table.serving_backends == 2


def test_tables_compare_by_value():
    snapshot = ClusterSnapshot({"a.test": FID}, {FID: (A,)}, {A: RUNNING}, frozenset({A.ip}))
    assert build_table(snapshot) == build_table(snapshot)
    assert build_table(ClusterSnapshot()) == RoutingTable()


def test_nginx_route_sends_endpoints_straight_and_the_rest_through_agents():
    endpoint = ServingEndpoint("10.160.0.2", 8080)
    route = Route(FID, (A, B), {A: endpoint})
    assert nginx_route(route, 8001) == {
        "function": str(FID),
        "direct": [{"address": "10.160.0.2", "port": 8080, "container": str(A.container_id)}],
        "agent": [{"address": B.ip, "port": 8001, "container": str(B.container_id)}],
    }
