"""Container placement: spreading, capacity, eligibility and the shortfall message."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismuth_core.errors import InsufficientCapacity
from bismuth_core.scheduler import NodeCapacity, place, place_in_order, rank_key

MiB = 1 << 20
GiB = 1 << 30


def node(ip: str, cpus: float = 4.0, memory: int = 8 * GiB, **kwargs: object) -> NodeCapacity:
    return NodeCapacity(ip, cpus, memory, **kwargs)  # type: ignore[arg-type]


# --- NodeCapacity -------------------------------------------------------------------


def test_free_capacity_and_headroom() -> None:
    n = node("10.0.0.1", cpus=4.0, memory=8 * GiB, reserved_cpu=1.0, reserved_memory=6 * GiB)
    assert n.free_cpu == 3.0
    assert n.free_memory == 2 * GiB
    assert n.headroom() == 0.25  # memory is the scarcer resource
    assert n.reserve(1.0, GiB).free_memory == GiB
    assert n.free_memory == 2 * GiB  # frozen: reserve returns a new value


@pytest.mark.parametrize(
    ("kwargs", "schedulable"),
    [({}, True), ({"enabled": False}, False), ({"alive": False}, False)],
)
def test_schedulable(kwargs: dict[str, bool], schedulable: bool) -> None:
    assert node("10.0.0.1", **kwargs).schedulable is schedulable


@pytest.mark.parametrize(("cpus", "memory"), [(0.0, GiB), (1.0, 0)])
def test_node_without_capacity_has_no_headroom(cpus: float, memory: int) -> None:
    assert node("10.0.0.1", cpus=cpus, memory=memory).headroom() == 0.0


# --- place: table cases -------------------------------------------------------------


def test_replicas_spread_over_distinct_nodes() -> None:
    nodes = [node(f"10.0.0.{i}") for i in range(1, 4)]
    assert sorted(place(nodes, 3, 0.5, 64 * MiB)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_more_replicas_than_nodes_share_evenly() -> None:
    nodes = [node("10.0.0.1"), node("10.0.0.2")]
    assert Counter(place(nodes, 4, 0.5, 64 * MiB)) == {"10.0.0.1": 2, "10.0.0.2": 2}


def test_prefers_the_node_with_most_free_capacity() -> None:
    nodes = [
        node("10.0.0.1", reserved_cpu=3.0),
        node("10.0.0.2", reserved_cpu=1.0),
        node("10.0.0.3", reserved_cpu=2.0),
    ]
    assert place(nodes, 1, 0.5, 64 * MiB) == ["10.0.0.2"]


def test_free_capacity_counts_the_scarcer_resource() -> None:
    nodes = [
        node("10.0.0.1", reserved_memory=7 * GiB),  # all cpu free, little memory
        node("10.0.0.2", reserved_cpu=2.0),  # half the cpu free, all memory
    ]
    assert place(nodes, 1, 0.5, 64 * MiB) == ["10.0.0.2"]


@pytest.mark.parametrize(
    ("free", "size", "fits"),
    [
        ({"reserved_cpu": 3.6}, (0.5, 64 * MiB), False),
        ({"reserved_cpu": 3.5}, (0.5, 64 * MiB), True),
        ({"reserved_memory": 8 * GiB - 64 * MiB + 1}, (0.5, 64 * MiB), False),
        ({"reserved_memory": 8 * GiB - 64 * MiB}, (0.5, 64 * MiB), True),
        ({}, (4.5, 64 * MiB), False),
        ({}, (4.0, 8 * GiB), True),
        ({}, (0.1, 8 * GiB + 1), False),
        ({"reserved_cpu": 5.0}, (0.1, MiB), False),  # over-committed already
    ],
)
def test_respects_cpu_and_memory(free: dict[str, Any], size: tuple[float, int], fits: bool) -> None:
    nodes = [node("10.0.0.1", **free)]
    if fits:
        assert place(nodes, 1, *size) == ["10.0.0.1"]
    else:
        with pytest.raises(InsufficientCapacity):
            place(nodes, 1, *size)


def test_ten_tenths_of_a_cpu_fit_on_one_cpu() -> None:
    nodes = [node("10.0.0.1", cpus=1.0)]
    assert place(nodes, 10, 0.1, MiB) == ["10.0.0.1"] * 10
    with pytest.raises(InsufficientCapacity) as info:
        place(nodes, 11, 0.1, MiB)
    assert "cannot place 1 of 11 container(s)" in info.value.message
    assert "the most free cpu on one node is 0 and" in info.value.message


def test_tenths_fit_after_existing_tenths() -> None:
    nodes = [node("10.0.0.1", cpus=1.0, reserved_cpu=sum([0.1] * 7))]
    assert place(nodes, 3, 0.1, MiB) == ["10.0.0.1"] * 3


def test_skips_disabled_and_dead_nodes() -> None:
    nodes = [
        node("10.0.0.1", cpus=64.0, enabled=False),
        node("10.0.0.2", cpus=64.0, alive=False),
        node("10.0.0.3", cpus=1.0),
    ]
    assert place(nodes, 2, 0.5, 64 * MiB) == ["10.0.0.3", "10.0.0.3"]


def test_exclude_keeps_nodes_out() -> None:
    nodes = [node("10.0.0.1", cpus=64.0), node("10.0.0.2")]
    assert place(nodes, 2, 0.5, 64 * MiB, exclude={"10.0.0.1"}) == ["10.0.0.2"] * 2


def test_existing_replicas_push_new_ones_elsewhere() -> None:
    nodes = [node("10.0.0.1", cpus=64.0), node("10.0.0.2"), node("10.0.0.3")]
    got = place(nodes, 2, 0.5, 64 * MiB, replicas={"10.0.0.1": 1, "10.0.0.2": 2})
    assert got == ["10.0.0.3", "10.0.0.1"]


def test_zero_containers_need_no_node() -> None:
    assert place([], 0, 0.5, 64 * MiB) == []


@pytest.mark.parametrize(
    ("nodes", "exclude"),
    [
        ([], ()),
        ([node("10.0.0.1", enabled=False), node("10.0.0.2", alive=False)], ()),
        ([node("10.0.0.1")], ("10.0.0.1",)),
    ],
)
def test_no_eligible_node_says_so(nodes: list[NodeCapacity], exclude: tuple[str, ...]) -> None:
    with pytest.raises(InsufficientCapacity) as info:
        place(nodes, 2, 0.5, 64 * MiB, exclude=exclude)
    assert info.value.status == 503
    assert info.value.message == ("cannot place 2 container(s): no enabled node with a live agent")


def test_shortfall_names_what_is_missing() -> None:
    nodes = [
        node("10.0.0.1", cpus=2.0, memory=GiB, reserved_cpu=1.5),
        node("10.0.0.2", cpus=1.0, memory=2 * GiB),
        node("10.0.0.3", enabled=False),
    ]
    with pytest.raises(InsufficientCapacity) as info:
        place(nodes, 5, 0.5, 512 * MiB)
    assert info.value.message == (
        "cannot place 2 of 5 container(s) needing cpu 0.5 and memory 536870912 bytes each: "
        "2 live enabled node(s), the most free cpu on one node is 0 and the most free "
        "memory 1073741824 bytes"
    )


def test_shortfall_never_reports_negative_free_capacity() -> None:
    nodes = [node("10.0.0.1", cpus=1.0, memory=GiB, reserved_cpu=2.0, reserved_memory=2 * GiB)]
    with pytest.raises(InsufficientCapacity, match="most free cpu on one node is 0 and the most"):
        place(nodes, 1, 0.5, MiB)


# --- place: properties --------------------------------------------------------------
# Sizes are multiples of 1/20 cpu and 1 MiB, so exact arithmetic (Fraction) decides what
# fits; the scheduler's float tolerance is far below that granularity.


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[NodeCapacity], list[Fraction]]:
    count = draw(st.integers(min_value=0, max_value=6))
    nodes, reserved = [], []
    for i in range(count):
        cpus = Fraction(draw(st.integers(0, 32)), 4)
        used = Fraction(draw(st.integers(0, 100)), 20)
        memory = draw(st.integers(0, 64)) * MiB
        nodes.append(
            NodeCapacity(
                ip=f"10.0.0.{i + 1}",
                cpus=float(cpus),
                memory=memory,
                reserved_cpu=float(used),
                reserved_memory=draw(st.integers(0, 64)) * MiB,
                enabled=draw(st.booleans()) or draw(st.booleans()),
                alive=draw(st.booleans()) or draw(st.booleans()),
            )
        )
        reserved.append(used)
    return nodes, reserved


def room(n: NodeCapacity, used: Fraction, cpu: Fraction, memory: int) -> int:
    """How many containers of this size fit on ``n`` by exact arithmetic."""
    by_cpu = math.floor((Fraction(n.cpus) - used) / cpu)
    by_memory = (n.memory - n.reserved_memory) // memory
    return max(0, min(by_cpu, by_memory))


@settings(max_examples=300, deadline=None)
@given(
    fleets(),
    st.integers(1, 40).map(lambda k: Fraction(k, 20)),
    st.integers(1, 16).map(lambda k: k * MiB),
    st.integers(0, 12),
    st.sets(st.sampled_from([f"10.0.0.{i}" for i in range(1, 7)]), max_size=2),
)
def test_place_never_overcommits_and_fails_only_when_it_must(
    fleet: tuple[list[NodeCapacity], list[Fraction]],
    cpu: Fraction,
    memory: int,
    count: int,
    exclude: set[str],
) -> None:
    nodes, reserved = fleet
    eligible = {
        n.ip: (n, used)
        for n, used in zip(nodes, reserved, strict=True)
        if n.enabled and n.alive and n.ip not in exclude
    }
    capacity = {ip: room(n, used, cpu, memory) for ip, (n, used) in eligible.items()}
    try:
        got = place(nodes, count, float(cpu), memory, exclude=exclude)
    except InsufficientCapacity as exc:
        assert sum(capacity.values()) < count
        assert f"of {count} container(s)" in exc.message or "no enabled node" in exc.message
        return
    assert len(got) == count
    for ip, placed in Counter(got).items():
        assert ip in eligible
        assert placed <= capacity[ip]
    # Distinct nodes first: every node that could take one gets one before any gets two.
    distinct = min(count, sum(1 for c in capacity.values() if c > 0))
    assert len(set(got[:distinct])) == distinct


@pytest.mark.parametrize(
    ("containers", "memory", "fits"),
    [
        (0, 900, True),  # 1000 - 100 overhead = 900 left for the container
        (0, 901, False),
        (2, 700, True),  # two containers hold 200 of overhead (and 0 reserved here)
        (2, 701, False),
    ],
)
def test_each_container_also_costs_the_nodes_overhead(
    containers: int, memory: int, fits: bool
) -> None:
    n = node("a", 4.0, 1000, containers=containers, overhead=100)
    assert n.fits(0.1, memory) is fits


def test_placing_counts_the_overhead_of_every_new_container() -> None:
    nodes = [node("a", 8.0, 1000, overhead=100)]
    assert place(nodes, 4, 0.1, 150) == ["a"] * 4  # 4 * (150 + 100) = 1000
    assert place(nodes, 5, 0.1, 100) == ["a"] * 5  # 5 * (100 + 100) = 1000
    with pytest.raises(InsufficientCapacity):
        place(nodes, 5, 0.1, 101)


@given(
    fleets(),
    st.integers(1, 4),
    st.integers(1, 40).map(lambda k: k / 20),
    st.integers(0, 32).map(lambda m: m * MiB),
    st.sets(st.integers(0, 5), max_size=2),
    st.dictionaries(st.integers(0, 5), st.integers(0, 2), max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_walking_nodes_in_rank_order_chooses_what_place_chooses(
    fleet, count, cpu, memory, excluded, held
):
    nodes = fleet[0]
    ips = [n.ip for n in nodes]
    exclude = {ips[i] for i in excluded if i < len(ips)}
    replicas = {ips[i]: c for i, c in held.items() if i < len(ips)}
    walked = place_in_order(
        sorted(nodes, key=rank_key), count, cpu, memory, exclude=exclude, replicas=replicas
    )
    if walked is None:
        return  # place decides alone
    assert walked == place(nodes, count, cpu, memory, exclude=exclude, replicas=replicas)


def test_walking_gives_way_to_place_when_too_few_nodes_hold_no_replica():
    nodes = [NodeCapacity(f"10.0.0.{i}", 4.0, 4 * GiB) for i in range(3)]
    walked = place_in_order(nodes, 2, 1.0, GiB, replicas={"10.0.0.0": 1, "10.0.0.1": 1})
    assert walked is None
    assert place(nodes, 2, 1.0, GiB, replicas={"10.0.0.0": 1, "10.0.0.1": 1})[0] == "10.0.0.2"
