"""The agent's reconcile loop against a fake runtime and a fake ZooKeeper side (no root).

Each case states what ZooKeeper wants (``desired``) and what the runtime has (``existing``:
a task state per container, and whether this agent process already supervises it); one
pass later, the runtime has been asked to do exactly ``calls`` and the node reports
``statuses``. The fakes implement :class:`bismuth_agent.model.Runtime` and
:class:`~bismuth_agent.model.Presence`; the real adapters are tested as root elsewhere.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from bismuth_agent.agent import Agent
from bismuth_agent.cgroups import CgroupError
from bismuth_agent.config import AgentConfig
from bismuth_agent.http import AgentMetrics
from bismuth_agent.logstore import LogStore
from bismuth_agent.model import (
    DesiredContainer,
    Event,
    ExecResult,
    Existing,
    Exited,
    Made,
    Missed,
    SetupFailed,
    Usage,
)
from bismuth_agent.network import Allocation
from bismuth_agent.plan import TaskState
from bismuth_agent.spec import IdMapping
from bismuth_core.definition import parse_definition
from bismuth_core.layout import ContainerStatus, ServingEndpoint
from tests.support.waiting import eventually

A, B, C = uuid.UUID(int=0xA), uuid.UUID(int=0xB), uuid.UUID(int=0xC)
FUNCTION = uuid.UUID(int=0xF)
EXECUTABLE = parse_definition(
    {"image": "i", "cpu": 0.1, "memory": 1 << 26, "invoke_mode": {"Executable": ["/bin/true"]}}
)
RUNNING, STOPPED, CREATED = TaskState.RUNNING, TaskState.STOPPED, TaskState.CREATED


@dataclass
class FakeRuntime:
    """Containers in a dict; every call recorded as ``(verb, container)``."""

    tasks: dict[uuid.UUID, TaskState] = field(default_factory=dict)
    failing: set[uuid.UUID] = field(default_factory=set)  # create raises SetupFailed
    unsettled: set[uuid.UUID] = field(default_factory=set)  # settle raises CgroupError
    settled: list[uuid.UUID] = field(default_factory=list)
    address: str = "10.99.0.2"  # container address of everything made (Server health)
    calls: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    pids: dict[uuid.UUID, int] = field(default_factory=dict)

    def _made(self, cid: uuid.UUID) -> Made:
        pid = self.pids.setdefault(cid, 1000 + len(self.pids))
        subnet = IPv4Network(f"{self.address}/30", strict=False)
        return Made(cid, pid, Allocation(str(cid), subnet), "token", IdMapping(1_000_000))

    async def start(self) -> None:
        self.calls.append(("start", uuid.UUID(int=0)))

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    async def observe(self) -> dict[uuid.UUID, Existing]:
        return {cid: Existing(cid, state, 1) for cid, state in self.tasks.items()}

    async def create(self, desired: DesiredContainer) -> Made:
        cid = desired.container_id
        self.calls.append(("create", cid))
        if cid in self.failing:
            raise SetupFailed("the image is not available")
        self.tasks[cid] = RUNNING
        return self._made(cid)

    async def adopt(self, desired: DesiredContainer) -> Made:
        self.calls.append(("adopt", desired.container_id))
        return self._made(desired.container_id)

    def settle(self, desired: DesiredContainer) -> None:
        if desired.container_id in self.unsettled:
            raise CgroupError("cannot set the cpu quota of cgroup x: gone")
        self.settled.append(desired.container_id)

    async def remove(self, cid: uuid.UUID, *, keep_logs: bool = False, grace: float = 0.0) -> None:
        self.calls.append(("remove-leftovers" if keep_logs else "remove", cid))
        self.tasks.pop(cid, None)
        self.pids.pop(cid, None)

    async def execute(
        self,
        desired: DesiredContainer,
        made: Made,
        argv: tuple[str, ...],
        stdin: AsyncIterable[bytes],
        timeout: float,
        max_output: int,
    ) -> ExecResult:
        return ExecResult(0, b"", b"")

    async def usage(self, cids: list[uuid.UUID]) -> list[Usage]:
        return [Usage(cid, 1.5, 1 << 20) for cid in cids]

    def cap_logs(self, cid: uuid.UUID) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass
class FakePresence:
    wanted: dict[uuid.UUID, DesiredContainer] = field(default_factory=dict)
    statuses: dict[uuid.UUID, ContainerStatus] = field(default_factory=dict)
    endpoints: dict[uuid.UUID, ServingEndpoint | None] = field(default_factory=dict)
    writes: list[tuple[uuid.UUID, ContainerStatus]] = field(default_factory=list)
    announced: list[int] = field(default_factory=list)
    connected: bool = True

    async def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    async def desired(self) -> dict[uuid.UUID, DesiredContainer]:
        return dict(self.wanted)

    async def set_status(
        self, cid: uuid.UUID, status: ContainerStatus, endpoint: ServingEndpoint | None = None
    ) -> None:
        self.statuses[cid] = status
        self.endpoints[cid] = endpoint
        self.writes.append((cid, status))

    async def announce(self, containers: int | None = None) -> None:
        self.announced.append(containers or 0)


@dataclass
class Node:
    agent: Agent
    runtime: FakeRuntime
    presence: FakePresence

    async def settle(self) -> None:
        """Let every action the last pass started finish."""
        while self.agent._work:
            await asyncio.gather(*list(self.agent._work))

    async def pass_(self) -> None:
        await self.agent.reconcile()
        await self.settle()


def make_node(tmp_path: Path, runtime: FakeRuntime, wanted: set[uuid.UUID], **config) -> Node:
    presence = FakePresence({c: DesiredContainer(c, FUNCTION, EXECUTABLE) for c in wanted})
    settings = AgentConfig(
        state_dir=str(tmp_path / "state"),
        log_dir=str(tmp_path / "logs"),
        restart_backoff=0.05,
        restart_backoff_cap=0.05,
        **config,
    )
    logs = LogStore(settings.log_dir, settings.log_max_bytes)
    agent = Agent(settings, runtime, presence, logs, AgentMetrics.create(), asyncio.Event())
    return Node(agent, runtime, presence)


@pytest.mark.parametrize(
    ("desired", "existing", "supervised", "calls", "statuses"),
    [
        pytest.param({A}, {}, set(), [("create", A)], {A: "Running"}, id="new container"),
        pytest.param(set(), {A: RUNNING}, set(), [("remove", A)], {}, id="not wanted"),
        pytest.param(
            {A}, {A: RUNNING}, set(), [("adopt", A)], {A: "Running"}, id="agent restarted"
        ),
        pytest.param(
            {A},
            {A: STOPPED},
            set(),
            [("remove-leftovers", A), ("create", A)],
            {A: "Running"},
            id="exited while no agent ran",
        ),
        pytest.param(
            {A},
            {A: CREATED},
            set(),
            [("remove-leftovers", A), ("create", A)],
            {A: "Running"},
            id="made but never started",
        ),
        pytest.param({A}, {A: RUNNING}, {A}, [], {A: "Running"}, id="supervised: nothing"),
        pytest.param(
            {A, B},
            {B: RUNNING},
            set(),
            [("create", A), ("adopt", B)],
            {A: "Running", B: "Running"},
            id="one new, one adopted",
        ),
    ],
)
async def test_one_pass(tmp_path, desired, existing, supervised, calls, statuses):
    runtime = FakeRuntime(tasks=dict(existing))
    node = make_node(tmp_path, runtime, desired)
    for cid in supervised:  # this process made it before
        await node.runtime.create(DesiredContainer(cid, FUNCTION, EXECUTABLE))
        await node.pass_()
    runtime.calls.clear()

    await node.pass_()

    assert sorted(runtime.calls) == sorted(calls)
    assert {c: s.label for c, s in node.presence.statuses.items()} == statuses
    assert node.presence.announced[-1] == len(desired)


async def test_a_container_that_cannot_be_made_is_failed_then_tried_again(tmp_path):
    runtime = FakeRuntime(failing={A})
    node = make_node(tmp_path, runtime, {A})
    await node.pass_()
    assert node.presence.statuses[A] == ContainerStatus.FAILED
    runtime.failing.clear()

    async def retried() -> bool:
        await node.pass_()
        return node.presence.statuses[A] == ContainerStatus.RUNNING

    for _ in range(100):  # the backoff is 0.05 s: a few passes at most
        if await retried():
            break
        await asyncio.sleep(0.02)
    assert runtime.calls.count(("create", A)) == 2


async def test_an_exit_event_fails_the_container_and_a_later_pass_restarts_it(tmp_path):
    runtime = FakeRuntime()
    node = make_node(tmp_path, runtime, {A})
    await node.pass_()
    made = node.agent.containers[A].made
    assert made is not None

    node.agent._on_event(Exited(A, made.pid + 1, 0))  # another process of it: ignored
    assert node.agent.containers[A].exited_at is None
    node.agent._on_event(Exited(A, made.pid, 3))
    await node.settle()
    assert node.presence.statuses[A] == ContainerStatus.FAILED
    assert "status 3" in LogStore(tmp_path / "logs", 1 << 20).path(A).read_text()

    await asyncio.sleep(0.06)  # past the backoff
    await node.pass_()
    assert runtime.calls[-2:] == [("remove-leftovers", A), ("create", A)]
    assert node.presence.statuses[A] == ContainerStatus.RUNNING


async def test_a_missed_exit_is_found_by_looking(tmp_path):
    runtime = FakeRuntime()
    node = make_node(tmp_path, runtime, {A})
    await node.pass_()
    runtime.tasks[A] = STOPPED  # exited while the event stream was broken
    node.agent._on_event(Missed())
    assert node.agent.wake.is_set()
    await node.pass_()
    assert node.presence.statuses[A] == ContainerStatus.FAILED


def server_definition(port: int):
    """A Server-mode function listening on ``port``."""
    return parse_definition(
        {"image": "i", "cpu": 0.1, "memory": 1 << 26, "invoke_mode": {"Server": [["/srv"], port]}}
    )


async def test_a_server_is_running_once_its_port_accepts_connections(tmp_path):
    with socket.create_server(("127.77.0.2", 0)) as listener:
        port = listener.getsockname()[1]
        server = server_definition(port)
        runtime = FakeRuntime(address="127.77.0.2")  # its .2 is the container address
        node = make_node(tmp_path, runtime, set())
        node.presence.wanted = {A: DesiredContainer(A, FUNCTION, server)}
        await node.pass_()
        assert node.presence.statuses[A] == ContainerStatus.RUNNING
        # where frontends connect to it straight
        assert node.presence.endpoints[A] == ServingEndpoint("127.77.0.2", port)


async def test_a_container_is_held_to_its_cpu_before_it_is_reported_running(tmp_path):
    """It starts with ``start_cpu`` cores; the quota is its function's by the time anyone
    reads ``Running``, and a container whose quota cannot be set is Failed, not Running."""
    with socket.create_server(("127.77.0.2", 0)) as listener:
        port = listener.getsockname()[1]
        server = server_definition(port)
        runtime = FakeRuntime(address="127.77.0.2", unsettled={B})
        node = make_node(tmp_path, runtime, set())
        node.presence.wanted = {c: DesiredContainer(c, FUNCTION, server) for c in (A, B)}
        await node.pass_()
        assert runtime.settled == [A]
        assert node.presence.statuses == {A: ContainerStatus.RUNNING, B: ContainerStatus.FAILED}
        assert ContainerStatus.RUNNING not in {s for c, s in node.presence.writes if c == B}
        assert (
            "cannot hold the container to its cpu"
            in (tmp_path / "logs").joinpath(str(B)).with_suffix(".log").read_text()
        )


async def test_an_adopted_server_keeps_running_in_zookeeper_while_it_is_checked(tmp_path):
    """After an agent restart, frontends keep sending traffic to an adopted Server-mode
    container: its status is never reported Starting, however many passes run before its
    port answers the agent's check."""
    with socket.create_server(("127.77.0.2", 0)) as probe:
        port = probe.getsockname()[1]  # free again below: the check is refused for now
    server = server_definition(port)
    runtime = FakeRuntime(tasks={A: RUNNING}, address="127.77.0.2")
    node = make_node(tmp_path, runtime, set())
    node.presence.wanted = {A: DesiredContainer(A, FUNCTION, server)}
    await node.agent.reconcile()  # adopts it; its check starts, and is refused
    for _ in range(3):
        await asyncio.sleep(0.05)
        await node.agent.reconcile()  # later passes report what they know
    assert runtime.calls == [("adopt", A)]
    assert node.presence.writes == []
    with socket.create_server(("127.77.0.2", port)):
        await node.settle()
    assert node.presence.writes == [(A, ContainerStatus.RUNNING)]
    assert node.presence.endpoints[A] == ServingEndpoint("127.77.0.2", port)


async def test_a_running_container_serves_through_its_drain_before_it_is_removed(tmp_path):
    runtime = FakeRuntime()
    node = make_node(tmp_path, runtime, {A}, stop_drain=0.3)
    await node.pass_()
    node.presence.wanted = {}
    await node.agent.reconcile()
    await asyncio.sleep(0.1)
    serving = node.agent.lookup(A)
    assert serving is not None and serving.serving()
    assert ("remove", A) not in runtime.calls
    await node.settle()
    assert runtime.calls[-1] == ("remove", A)
    assert node.agent.lookup(A) is None


def _series(node: Node, name: str) -> set[str]:
    families = node.agent.metrics.registry.collect()
    return {s.labels["container_id"] for f in families for s in f.samples if s.name == name}


async def test_a_removed_containers_usage_series_go_with_it(tmp_path):
    node = make_node(tmp_path, FakeRuntime(), {A})
    await node.pass_()
    await node.agent.refresh_metrics()
    assert _series(node, "bismuth_agent_container_memory_bytes") == {str(A)}
    node.presence.wanted = {}
    await node.pass_()
    assert node.agent.lookup(A) is None
    await node.agent.refresh_metrics()
    assert _series(node, "bismuth_agent_container_memory_bytes") == set()
    assert _series(node, "bismuth_agent_container_cpu_seconds") == set()


async def test_status_writes_land_in_the_order_they_were_decided(tmp_path):
    """A status decided while an earlier write is still on its way is written after it,
    never lost behind it: ZooKeeper ends with the later one."""
    node = make_node(tmp_path, FakeRuntime(), {A})
    await node.pass_()
    assert node.presence.statuses[A] == ContainerStatus.RUNNING
    sup = node.agent.containers[A]
    gate = asyncio.Event()
    write = node.presence.set_status

    async def slow_failed(cid, status, endpoint=None):
        if status == ContainerStatus.FAILED:
            await gate.wait()
        await write(cid, status, endpoint)

    node.presence.set_status = slow_failed
    first = asyncio.create_task(node.agent._set_status(sup, ContainerStatus.FAILED))
    await asyncio.sleep(0.01)  # its write is on its way
    second = asyncio.create_task(node.agent._set_status(sup, ContainerStatus.RUNNING))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, second)
    assert node.presence.statuses[A] == ContainerStatus.RUNNING
    assert node.presence.writes[-2:] == [(A, ContainerStatus.FAILED), (A, ContainerStatus.RUNNING)]


def slowed(runtime: FakeRuntime) -> asyncio.Event:
    """Make the runtime's listing wait until the returned event is set."""
    listing = asyncio.Event()
    observe = runtime.observe

    async def slow_observe() -> dict[uuid.UUID, Existing]:
        await listing.wait()
        return await observe()

    runtime.observe = slow_observe  # type: ignore[method-assign]
    return listing


async def test_a_new_container_is_made_while_the_runtime_is_still_being_listed(tmp_path):
    runtime = FakeRuntime(tasks={B: RUNNING})  # a leftover of an earlier agent
    node = make_node(tmp_path, runtime, set())
    node.presence.wanted = {c: DesiredContainer(c, FUNCTION, EXECUTABLE) for c in (A, B)}
    listing = slowed(runtime)
    first = asyncio.ensure_future(node.agent.reconcile())
    for _ in range(20):  # let the pass run as far as it can without the listing
        await asyncio.sleep(0)
    assert not node.agent.containers  # never listed: nothing is made before the listing
    listing.set()
    await first
    await node.settle()
    assert sorted(runtime.calls) == sorted([("create", A), ("adopt", B)])

    listing.clear()
    node.presence.wanted[C] = DesiredContainer(C, FUNCTION, EXECUTABLE)
    later = asyncio.ensure_future(node.agent.reconcile())
    await eventually(lambda: ("create", C) in runtime.calls, what="C made before the listing")
    assert not later.done()
    listing.set()
    await later
    await node.settle()
    assert runtime.calls.count(("create", C)) == 1
    assert node.presence.statuses[C] == ContainerStatus.RUNNING


async def test_a_container_made_early_is_made_once_when_the_listing_came_first(tmp_path):
    """containerd's listing of the same pass may end before ZooKeeper's answer, and so
    not show the container made early: the pass still does not make it a second time."""
    runtime = FakeRuntime()
    node = make_node(tmp_path, runtime, set())
    await node.pass_()
    answer = asyncio.Event()
    desired = node.presence.desired

    async def slow_desired() -> dict[uuid.UUID, DesiredContainer]:
        await answer.wait()
        return await desired()

    node.presence.desired = slow_desired  # type: ignore[method-assign]
    node.presence.wanted = {C: DesiredContainer(C, FUNCTION, EXECUTABLE)}
    listed = runtime.observe
    listings: list[int] = []

    async def counted_observe() -> dict[uuid.UUID, Existing]:
        found = await listed()
        listings.append(len(found))
        return found

    runtime.observe = counted_observe  # type: ignore[method-assign]
    reconciling = asyncio.ensure_future(node.agent.reconcile())
    await eventually(lambda: listings == [0], what="containerd listed first")
    answer.set()
    await reconciling
    await node.settle()
    assert runtime.calls.count(("create", C)) == 1
