"""How the agent reads containerd's view of its containers: a task the task list cannot
describe (its shim did not answer in time: status UNKNOWN, or left out) is asked for alone,
and is never taken for a missing task, which would remake a container that runs. A fake
containerd client stands in for the answers a loaded containerd gives."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from bismuth_agent.config import AgentConfig
from bismuth_agent.containerd.errors import ContainerdError, NotFound
from bismuth_agent.plan import TaskState
from bismuth_agent.runtime import ContainerRuntime

RUNS, LEFT_OUT, SLOW, GONE, HALF = (uuid.UUID(int=i) for i in range(1, 6))


@dataclass
class Task:
    container_id: str
    status: str
    exit_status: int = 0


@dataclass
class Record:
    id: str


@dataclass
class Tasks:
    listed: list[Task]
    alone: dict[str, Task | Exception]
    asked: list[str] = field(default_factory=list)

    async def list(self) -> list[Task]:
        return self.listed

    async def get(self, container_id: str) -> Task:
        self.asked.append(container_id)
        answer = self.alone[container_id]
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class Containers:
    ids: list[uuid.UUID]

    async def list(self, filters: list[str]) -> list[Record]:
        return [Record(str(cid)) for cid in self.ids]


@dataclass
class Containerd:
    containers: Containers
    tasks: Tasks


async def test_tasks_the_list_cannot_describe_are_asked_alone():
    tasks = Tasks(
        listed=[Task(str(RUNS), "RUNNING"), Task(str(SLOW), "UNKNOWN")],
        alone={
            str(LEFT_OUT): Task(str(LEFT_OUT), "RUNNING"),  # its shim answered the second time
            str(SLOW): ContainerdError("DEADLINE_EXCEEDED", "context deadline exceeded"),
            str(GONE): NotFound("NOT_FOUND", "no running task found"),
            str(HALF): Task(str(HALF), "UNKNOWN"),
        },
    )
    runtime = object.__new__(ContainerRuntime)
    runtime.config = AgentConfig()
    runtime.ctrd = Containerd(Containers([RUNS, LEFT_OUT, SLOW, GONE, HALF]), tasks)  # type: ignore[assignment]
    found = await runtime.observe()
    assert {cid: e.state for cid, e in found.items()} == {
        RUNS: TaskState.RUNNING,
        LEFT_OUT: TaskState.RUNNING,
        SLOW: TaskState.UNKNOWN,
        GONE: TaskState.ABSENT,
        HALF: TaskState.UNKNOWN,
    }
    assert sorted(tasks.asked) == sorted(str(c) for c in (LEFT_OUT, SLOW, GONE, HALF))
