"""containerd's event stream: task exits and OOMs as they happen.

``subscribe()`` opens the stream and returns an ``EventStream``: an async iterator of
``Envelope``s whose ``event`` is a ``TaskExit``, ``TaskOOM``, ``TaskStart`` or
``TaskDelete`` (``None`` for kinds not decoded). containerd sends nothing until an event
happens, so the stream proves it is live by publishing a probe event to itself:
``await stream.ready()`` returns once the probe came back, after which no event can be
missed (an agent lists tasks after that to close the gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import grpc
from google.protobuf import any_pb2, empty_pb2

from bismuth_agent.containerd._api.containerd.events import task_pb2 as task_events
from bismuth_agent.containerd._api.containerd.services.events.v1 import (
    events_pb2,
    events_pb2_grpc,
)
from bismuth_agent.containerd.connection import Connection
from bismuth_agent.containerd.errors import ContainerdError, translate
from bismuth_agent.containerd.types import timestamp

TASK_TOPICS = ("/tasks/exit", "/tasks/oom")
_PROBE_TOPIC = "/bismuth/subscribed"


@dataclass(frozen=True)
class TaskExit:
    container_id: str
    id: str  # exec id, or the container id for the init process
    pid: int
    exit_status: int
    exited_at: datetime | None


@dataclass(frozen=True)
class TaskOOM:
    container_id: str


@dataclass(frozen=True)
class TaskStart:
    container_id: str
    pid: int


@dataclass(frozen=True)
class TaskDelete:
    container_id: str
    pid: int
    exit_status: int


Event = TaskExit | TaskOOM | TaskStart | TaskDelete


@dataclass(frozen=True)
class Envelope:
    namespace: str
    topic: str
    timestamp: datetime | None
    event: Event | None


def decode_event(value: any_pb2.Any) -> Event | None:
    kind = value.type_url.rsplit("/", 1)[-1]
    if kind == "containerd.events.TaskExit":
        e = task_events.TaskExit.FromString(value.value)
        return TaskExit(e.container_id, e.id, e.pid, e.exit_status, timestamp(e.exited_at))
    if kind == "containerd.events.TaskOOM":
        return TaskOOM(task_events.TaskOOM.FromString(value.value).container_id)
    if kind == "containerd.events.TaskStart":
        s = task_events.TaskStart.FromString(value.value)
        return TaskStart(s.container_id, s.pid)
    if kind == "containerd.events.TaskDelete":
        d = task_events.TaskDelete.FromString(value.value)
        return TaskDelete(d.container_id, d.pid, d.exit_status)
    return None


def topic_filters(namespace: str | None, topics: Iterable[str]) -> list[str]:
    """containerd filters (ORed) for these topics, within one namespace unless None."""
    scope = f'namespace=="{namespace}",' if namespace else ""
    return [f'{scope}topic=="{topic}"' for topic in topics]


class EventStream:
    """An open subscription; iterate it, ``await ready()``, and ``close()`` it when done."""

    def __init__(self, conn: Connection, filters: list[str], probe_every: float = 0.2) -> None:
        self._conn = conn
        self._probe = f"{_PROBE_TOPIC}/{uuid.uuid4().hex}"
        stub = events_pb2_grpc.EventsStub(conn.channel)
        request = events_pb2.SubscribeRequest(filters=[*filters, f'topic=="{self._probe}"'])
        self._call = stub.Subscribe(request, **conn.stream())
        self._queue: asyncio.Queue[Envelope | BaseException] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._prober = asyncio.create_task(self._send_probes(probe_every))

    async def _read(self) -> None:
        try:
            async for envelope in self._call:
                if envelope.topic == self._probe:
                    self._ready.set()
                    continue
                self._queue.put_nowait(
                    Envelope(
                        envelope.namespace,
                        envelope.topic,
                        timestamp(envelope.timestamp),
                        decode_event(envelope.event),
                    )
                )
            self._queue.put_nowait(ContainerdError("CANCELLED", "event stream ended"))
        except grpc.aio.AioRpcError as exc:
            self._queue.put_nowait(translate(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait(exc)

    async def _send_probes(self, every: float) -> None:
        stub = events_pb2_grpc.EventsStub(self._conn.channel)
        probe = any_pb2.Any()
        probe.Pack(empty_pb2.Empty())
        request = events_pb2.PublishRequest(topic=self._probe, event=probe)
        while not self._ready.is_set():
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._conn.call(stub.Publish, request)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), every)

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once the subscription is live (containerd delivered our probe)."""
        waiter = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self._reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            if self._reader in done and not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, BaseException):
                    raise item
            raise ContainerdError("DEADLINE_EXCEEDED", "event subscription did not start")

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self

    async def __anext__(self) -> Envelope:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later read fails the same way
            raise item
        return item

    async def close(self) -> None:
        self._call.cancel()
        for task in (self._prober, self._reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class EventService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def subscribe(
        self,
        topics: Iterable[str] = TASK_TOPICS,
        *,
        all_namespaces: bool = False,
        filters: Iterable[str] = (),
    ) -> EventStream:
        """Events of these topics (this client's namespace unless ``all_namespaces``).

        Extra containerd ``filters`` are ORed with the topic filters.
        """
        namespace = None if all_namespaces else self._conn.namespace
        return EventStream(self._conn, [*topic_filters(namespace, topics), *filters])
