"""Routing table and Host normalization: pure, table-driven."""

from __future__ import annotations

import uuid

import pytest

from bismuth_core.errors import NotFound, Unavailable
from bismuth_core.layout import Backend, ContainerStatus
from bismuth_fe.routing import (
    ClusterSnapshot,
    RoutingTable,
    build_table,
    eligible_backends,
    normalize_host,
)

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
    ("raw", "expected"),
    [
        ("app.example", "app.example"),
        ("App.Example", "app.example"),
        ("app.example.", "app.example"),
        ("APP.example.:8000", "app.example"),
        ("app.example:", "app.example"),
        (" app.example ", "app.example"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("app.example:http", "app.example:http"),  # not a port: left for the lookup to miss
        ("", None),
        (":80", None),
        (None, None),
    ],
)
def test_normalize_host(raw, expected):
    assert normalize_host(raw) == expected


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
    table = build_table(
        ClusterSnapshot(
            routes={"a.test": FID, "www.a.test": FID, "b.test": other, "gone.test": uuid.uuid4()},
            backends={FID: (A, B), other: (C,)},
            statuses={A: RUNNING, B: RUNNING, C: STARTING},
            live_nodes=frozenset({A.ip, B.ip, C.ip}),
        )
    )
    assert table.lookup("a.test") == table.lookup("www.a.test")
    assert table.lookup("a.test").function_id == FID
    assert table.lookup("a.test").backends == (A, B)
    with pytest.raises(Unavailable, match=str(other)):
        table.lookup("b.test")
    with pytest.raises(Unavailable, match=r"gone\.test"):
        table.lookup("gone.test")  # route to a function that is not (or no longer) there
    with pytest.raises(NotFound, match=r"'c\.test'"):
        table.lookup("c.test")
    assert table.serving_backends == 2


def test_tables_compare_by_value():
    snapshot = ClusterSnapshot({"a.test": FID}, {FID: (A,)}, {A: RUNNING}, frozenset({A.ip}))
    assert build_table(snapshot) == build_table(snapshot)
    assert build_table(ClusterSnapshot()) == RoutingTable()
