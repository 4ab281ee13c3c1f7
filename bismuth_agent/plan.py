"""The agent's reconcile plan: observed containers versus the node's desired ones, no I/O.

Each pass of the agent reads the full desired state (this node's container znodes) and the
full observed state (containerd's containers and tasks, plus what this agent process
supervises), then applies the actions :func:`plan_node` returns:

- a desired container that does not exist is created;
- one whose task runs but that this process does not supervise (the agent restarted) is
  adopted, never restarted;
- one whose task has exited is restarted after an exponential backoff, capped;
- anything observed that is not desired is removed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


class TaskState(Enum):
    ABSENT = "absent"  # no containerd container (or a half-made one without a task)
    CREATED = "created"  # task created, not started
    RUNNING = "running"
    STOPPED = "stopped"  # task exited
    # containerd could not tell (its shim did not answer in time): left alone until it can
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Observed:
    container_id: uuid.UUID
    task: TaskState
    supervised: bool = False  # this process holds its network, provider and log handles
    exited_at: float | None = None  # monotonic time the task was seen exiting
    failures: int = 0  # consecutive exits without a successful start


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self.base * 2 ** (failures - 1), self.cap))


@dataclass(frozen=True)
class Create:
    container_id: uuid.UUID


@dataclass(frozen=True)
class Adopt:
    container_id: uuid.UUID


@dataclass(frozen=True)
class Restart:
    container_id: uuid.UUID


@dataclass(frozen=True)
class Remove:
    container_id: uuid.UUID


Action = Create | Adopt | Restart | Remove

_UNSTARTED = (TaskState.ABSENT, TaskState.CREATED)


def plan_node(
    desired: set[uuid.UUID],
    observed: Mapping[uuid.UUID, Observed],
    now: float,
    backoff: Backoff = Backoff(),
) -> list[Action]:
    """Actions that move ``observed`` towards ``desired``; removals first, to free room."""
    actions: list[Action] = [Remove(cid) for cid in sorted(set(observed) - desired)]
    for cid in sorted(desired):
        seen = observed.get(cid)
        if seen is None or (
            seen.task in (TaskState.ABSENT, TaskState.CREATED) and not seen.supervised
        ):
            actions.append(Create(cid))
        elif seen.task == TaskState.RUNNING and not seen.supervised:
            actions.append(Adopt(cid))
        elif seen.task == TaskState.STOPPED and _backoff_over(seen, now, backoff):
            actions.append(Restart(cid))
    return actions


def unheard_of(
    desired: set[uuid.UUID], known: set[uuid.UUID], listed: set[uuid.UUID] | None
) -> list[uuid.UUID]:
    """Desired containers that can be created before the runtime is listed again: this
    process neither supervises nor removes them (``known``) and the runtime's last listing
    (``listed``; None: not listed yet) did not have them. Container ids are never reused,
    so one that appears now cannot have been made since by anyone but this process."""
    if listed is None:
        return []
    return sorted(desired - known - listed)


def _backoff_over(seen: Observed, now: float, backoff: Backoff) -> bool:
    if seen.exited_at is None:
        return True
    return now - seen.exited_at >= backoff.delay(seen.failures)


def next_wake(
    observed: Mapping[uuid.UUID, Observed], now: float, backoff: Backoff = Backoff()
) -> float | None:
    """Seconds until the earliest pending restart is due, or None if none is pending."""
    waits = [
        seen.exited_at + backoff.delay(seen.failures) - now
        for seen in observed.values()
        if seen.task == TaskState.STOPPED and seen.exited_at is not None
    ]
    return max(min(waits), 0.0) if waits else None
