"""The health gate of rolling agent upgrades: what passes, what waits, what fails at once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tasks.agent_gate import Observation, judge

A, B = "0f2c7c62-6a3e-4e0e-9d4c-1f7b1c2d3e4f", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
NEW = "0.2.0"
HEALTHY = Observation(
    version=NEW,
    statuses={A: "Running", B: "Running"},
    supervised={"Running": 2},
    pids={A: 100, B: 200},
)
RECORDED = {A: 100, B: 200}


def test_a_healthy_node_on_the_new_version_passes() -> None:
    verdict = judge(HEALTHY, NEW, RECORDED)
    assert (verdict.passed, verdict.fatal, verdict.reasons) == (True, False, ())


def test_a_node_without_containers_passes_once_its_agent_is_alive() -> None:
    empty = Observation(version=NEW, statuses={}, supervised={}, pids={})
    assert judge(empty, NEW, {}).passed


@pytest.mark.parametrize(
    ("seen", "reason"),
    [
        (replace(HEALTHY, version=None), "the agent is not alive in ZooKeeper"),
        (replace(HEALTHY, version="0.1.0"), "the live agent reports version 0.1.0, not 0.2.0"),
        (replace(HEALTHY, statuses={A: "Running", B: "Starting"}), f"container {B} is Starting"),
        (replace(HEALTHY, statuses={A: "Running", B: "Pending"}), f"container {B} is Pending"),
        (replace(HEALTHY, supervised=None), "the agent's /healthz does not answer"),
        (
            replace(HEALTHY, supervised={"Running": 1}),
            "the agent supervises {'Running': 1}, not 2 Running",
        ),
    ],
)
def test_not_yet_healthy_waits_and_says_why(seen: Observation, reason: str) -> None:
    verdict = judge(seen, NEW, RECORDED)
    assert (verdict.passed, verdict.fatal) == (False, False)
    assert reason in verdict.reasons


@pytest.mark.parametrize(
    ("pids", "reason"),
    [
        ({A: 100, B: 201}, f"container {B}: task PID 200 before the restart, 201 now"),
        ({A: 100}, f"container {B}: task PID 200 before the restart, none now"),
    ],
)
def test_a_replaced_task_fails_at_once(pids: dict[str, int], reason: str) -> None:
    verdict = judge(replace(HEALTHY, pids=pids), NEW, RECORDED)
    assert (verdict.passed, verdict.fatal, verdict.reasons) == (False, True, (reason,))


def test_an_agent_its_service_manager_gave_up_on_fails_at_once() -> None:
    verdict = judge(replace(HEALTHY, version=None, service_down=True), NEW, RECORDED)
    assert (verdict.passed, verdict.fatal) == (False, True)


def test_containers_no_longer_on_the_node_and_new_ones_are_not_held_against_it() -> None:
    moved_away = replace(HEALTHY, statuses={A: "Running"}, supervised={"Running": 1}, pids={A: 100})
    assert judge(moved_away, NEW, RECORDED).passed
    C = "11111111-2222-4333-8444-555555555555"
    arrived = replace(
        HEALTHY,
        statuses={**HEALTHY.statuses, C: "Running"},
        supervised={"Running": 3},
        pids={**HEALTHY.pids, C: 300},
    )
    assert judge(arrived, NEW, RECORDED).passed
