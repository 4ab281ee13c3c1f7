"""Cold-start timelines: the agent's stage stamps and the frontend's routed times."""

from __future__ import annotations

import uuid

from bismuth_agent.timeline import COMMITTED, IMAGE, SEEN, STAGES, TASK, Timelines, durations
from bismuth_core.layout import Backend
from bismuth_fe.routing import Route, RoutingTable
from bismuth_fe.timeline import RouteTimes

A, B = uuid.uuid4(), uuid.uuid4()


def test_a_start_is_stamped_once_per_stage_in_order():
    lines = Timelines()
    lines.begin(A, committed=5.0)
    lines.stamp(A, IMAGE)
    first = lines.get(A)
    lines.stamp(A, IMAGE)  # a stage is reached once per start
    lines.stamp(A, TASK)
    line = lines.get(A)
    assert line is not None and first is not None
    assert list(line) == [COMMITTED, SEEN, IMAGE, TASK]
    assert line[IMAGE] == first[IMAGE]
    assert line[COMMITTED] == 5.0 <= line[SEEN] <= line[IMAGE] <= line[TASK]


def test_a_restart_begins_again_and_unbegun_containers_are_not_stamped():
    lines = Timelines()
    lines.stamp(A, IMAGE)
    assert lines.get(A) is None
    lines.begin(A, committed=1.0)
    lines.stamp(A, IMAGE)
    lines.begin(A)  # restarted: no commit of its own
    assert list(lines.get(A) or {}) == [SEEN]


def test_only_the_latest_starts_are_kept():
    lines = Timelines(kept=2)
    cids = [uuid.uuid4() for _ in range(3)]
    for cid in cids:
        lines.begin(cid)
    assert list(lines.all()) == [str(c) for c in cids[1:]]


def test_durations_are_milliseconds_from_the_stage_before():
    assert durations({COMMITTED: 10.0, SEEN: 10.02, IMAGE: 10.5}) == {SEEN: 20.0, IMAGE: 480.0}
    assert STAGES[0] == COMMITTED


def table(*backends: Backend) -> RoutingTable:
    return RoutingTable({"h.test": Route(uuid.uuid4(), backends)})


def test_a_backend_is_routed_when_a_table_first_holds_it_again():
    times = RouteTimes()
    one, two = Backend("10.0.0.1", A), Backend("10.0.0.1", B)
    times.observe(table(one))
    first = times.as_json()[str(A)]["routed"]
    times.observe(table(one, two))
    assert times.as_json()[str(A)]["routed"] == first  # still routed: not stamped again
    assert str(B) in times.as_json()
    times.observe(table(two))
    times.observe(table(one, two))
    assert times.as_json()[str(A)]["routed"] >= first
    assert list(times.as_json()) == [str(B), str(A)]


def test_a_delta_stamps_only_backends_no_route_held_before():
    one, two = Backend("10.0.0.1", A), Backend("10.0.0.1", B)
    fid = uuid.uuid4()
    kept = Route(uuid.uuid4(), (one,))
    before = RoutingTable({"h.test": Route(fid, (one,)), "k.test": kept})
    times = RouteTimes()
    times.observe(before)
    first = times.as_json()[str(A)]["routed"]
    after = RoutingTable({"h.test": Route(fid, (one, two)), "k.test": kept})
    times.observe_change(before, after)
    assert times.as_json()[str(A)]["routed"] == first  # still routed: not stamped again
    assert list(times.as_json()) == [str(A), str(B)]
    gone = RoutingTable({"h.test": Route(fid, (two,))})
    times.observe_change(after, gone)
    times.observe_change(gone, after)
    assert list(times.as_json()) == [str(B), str(A)]  # A was unrouted, then routed again
