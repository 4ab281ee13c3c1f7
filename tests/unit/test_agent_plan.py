"""The agent's reconcile plan, table-driven."""

from __future__ import annotations

import uuid

import pytest

from bismuth_agent.plan import (
    Adopt,
    Backoff,
    Create,
    Observed,
    Remove,
    Restart,
    TaskState,
    next_wake,
    plan_node,
    unheard_of,
)

A, B, C = (uuid.UUID(int=i) for i in (1, 2, 3))


def seen(cid, task, supervised=True, exited_at=None, failures=0):
    return Observed(cid, task, supervised, exited_at, failures)


@pytest.mark.parametrize(
    ("desired", "observed", "now", "expected"),
    [
        ({A}, {}, 0.0, [Create(A)]),
        (set(), {A: seen(A, TaskState.RUNNING)}, 0.0, [Remove(A)]),
        ({A}, {A: seen(A, TaskState.RUNNING)}, 0.0, []),
        ({A}, {A: seen(A, TaskState.RUNNING, supervised=False)}, 0.0, [Adopt(A)]),
        # a half-made container left by a killed agent is made again (after its teardown)
        ({A}, {A: seen(A, TaskState.ABSENT, supervised=False)}, 0.0, [Create(A)]),
        ({A}, {A: seen(A, TaskState.CREATED, supervised=False)}, 0.0, [Create(A)]),
        # containerd could not tell (a shim slow to answer): left alone, removed if unwanted
        ({A}, {A: seen(A, TaskState.UNKNOWN, supervised=False)}, 0.0, []),
        (set(), {A: seen(A, TaskState.UNKNOWN, supervised=False)}, 0.0, [Remove(A)]),
        # this process is creating it right now: leave it alone
        ({A}, {A: seen(A, TaskState.CREATED, supervised=True)}, 0.0, []),
        # exited: restart once the backoff (1 s, 2 s, 4 s ...) is over
        ({A}, {A: seen(A, TaskState.STOPPED, exited_at=10.0, failures=1)}, 10.5, []),
        ({A}, {A: seen(A, TaskState.STOPPED, exited_at=10.0, failures=1)}, 11.0, [Restart(A)]),
        ({A}, {A: seen(A, TaskState.STOPPED, exited_at=10.0, failures=3)}, 13.9, []),
        ({A}, {A: seen(A, TaskState.STOPPED, exited_at=10.0, failures=3)}, 14.0, [Restart(A)]),
        (
            {A, B},
            {B: seen(B, TaskState.RUNNING), C: seen(C, TaskState.STOPPED)},
            0.0,
            [Remove(C), Create(A)],
        ),
    ],
)
def test_plan_node(desired, observed, now, expected):
    assert plan_node(desired, observed, now) == expected


def test_backoff_is_exponential_and_capped():
    backoff = Backoff(base=0.5, cap=5.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_next_wake_is_the_earliest_due_restart():
    observed = {
        A: seen(A, TaskState.STOPPED, exited_at=10.0, failures=2),  # due at 12
        B: seen(B, TaskState.STOPPED, exited_at=10.0, failures=1),  # due at 11
        C: seen(C, TaskState.RUNNING),
    }
    assert next_wake(observed, 10.25) == pytest.approx(0.75)
    assert next_wake(observed, 20.0) == 0.0
    assert next_wake({C: seen(C, TaskState.RUNNING)}, 0.0) is None


def test_containers_unheard_of_start_before_the_runtime_is_listed():
    new, supervised, removing, leftover = (uuid.uuid4() for _ in range(4))
    desired = {new, supervised, removing, leftover}
    known = {supervised, removing}
    assert unheard_of(desired, known, listed={leftover}) == [new]
    assert unheard_of(desired, known, listed=None) == []  # not listed yet: the plan decides
    assert unheard_of(set(), known, listed=set()) == []
