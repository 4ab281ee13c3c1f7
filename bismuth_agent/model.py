"""What the agent and its runtime say to each other, and the doors the agent goes through.

The reconcile loop (:mod:`.agent`) knows its containers only through a :class:`Runtime`
(containerd, the network, the firewall, providers: :class:`.runtime.ContainerRuntime`) and
its share of ZooKeeper only through a :class:`Presence` (:class:`.presence.NodePresence`).
Both are Protocols, so the loop runs against fakes in unit tests; what crosses them is the
small, frozen vocabulary below.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from bismuth_agent.network import Allocation
from bismuth_core.definition import FunctionDefinition
from bismuth_core.errors import BismuthError
from bismuth_core.layout import ContainerStatus, ServingEndpoint

from .plan import TaskState
from .spec import IdMapping


@dataclass(frozen=True)
class DesiredContainer:
    container_id: uuid.UUID
    function_id: uuid.UUID
    definition: FunctionDefinition
    committed_at: float | None = None  # wall-clock time its znode was made (the API's commit)


@dataclass(frozen=True)
class Made:
    """A container whose task exists: what serving it needs."""

    container_id: uuid.UUID
    pid: int
    allocation: Allocation
    token: str
    ids: IdMapping  # its own host id range


@dataclass(frozen=True)
class Existing:
    """One of this node's containers as the runtime finds it, and its task's state."""

    container_id: uuid.UUID
    state: TaskState
    exit_status: int | None = None  # of a stopped task


@dataclass(frozen=True)
class Exited:
    """A container's process ended (its task's init process, ``pid``)."""

    container_id: uuid.UUID
    pid: int
    exit_status: int


@dataclass(frozen=True)
class OutOfMemory:
    container_id: uuid.UUID


@dataclass(frozen=True)
class Missed:
    """The runtime may have missed events (its stream broke): look at everything again."""


Event = Exited | OutOfMemory | Missed


@dataclass(frozen=True)
class Usage:
    container_id: uuid.UUID
    cpu_seconds: float
    memory_bytes: int


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class SetupFailed(BismuthError):
    """A container could not be made; the message says which step and why."""


class ExecTimeout(Exception):
    """The program did not finish within the timeout (it has been killed)."""


class ExecOutputTooLarge(Exception):
    """The program wrote more than the output limit to stdout (it has been killed)."""


class Runtime(Protocol):
    """Containers of this node: made, found, watched, run in and removed."""

    async def start(self) -> None:
        """Prepare the host (firewall, forwarding), start watching for events, and forget
        what containers that are gone left behind (an agent killed mid-removal)."""

    def events(self) -> AsyncIterator[Event]:
        """Exits and OOMs as they happen, from the moment :meth:`start` returned."""

    async def observe(self) -> dict[uuid.UUID, Existing]:
        """This node's containers and the state of their tasks."""

    async def create(self, desired: DesiredContainer) -> Made:
        """Make the container and start its task; ``SetupFailed`` leaves nothing behind."""

    async def adopt(self, desired: DesiredContainer) -> Made:
        """Take over a container whose task runs, restarting nothing."""

    def settle(self, desired: DesiredContainer) -> None:
        """Its entrypoint serves: hold it to its function's cpu from now on."""

    async def remove(self, cid: uuid.UUID, *, keep_logs: bool = False, grace: float = 0.0) -> None:
        """SIGTERM, ``grace`` seconds, SIGKILL; then undo every setup step."""

    async def execute(
        self,
        desired: DesiredContainer,
        made: Made,
        argv: tuple[str, ...],
        stdin: AsyncIterable[bytes],
        timeout: float,
        max_output: int,
    ) -> ExecResult:
        """Run ``argv`` in the container once (Executable mode)."""

    async def usage(self, cids: list[uuid.UUID]) -> list[Usage]:
        """cpu and memory each container used so far."""

    def cap_logs(self, cid: uuid.UUID) -> None:
        """Keep the container's (and its provider's) log files under their caps."""

    async def close(self) -> None:
        """Stop watching; containers and their providers keep running."""


class Presence(Protocol):
    """This node's share of ZooKeeper: what it should run, and what it reports."""

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    def stop(self) -> None: ...

    async def desired(self) -> dict[uuid.UUID, DesiredContainer]: ...

    async def set_status(
        self, cid: uuid.UUID, status: ContainerStatus, endpoint: ServingEndpoint | None = None
    ) -> None:
        """Report a container's status (and, Running in Server mode, where it serves)."""

    async def announce(self, containers: int | None = None) -> None: ...
