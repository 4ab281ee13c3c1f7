"""containerd's task service: the running processes of a container.

A task is a container's init process (run by the runc shim); ``exec`` adds processes to a
running task. ``kill`` only signals: the exit shows up on the event stream (``events.py``)
and through ``wait``. ``delete`` removes a stopped task (``NotFound`` when there is none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import any_pb2

from bismuth_agent.containerd._api.cgroups.v1 import metrics_pb2 as cgroups_v1
from bismuth_agent.containerd._api.cgroups.v2 import metrics_pb2 as cgroups_v2
from bismuth_agent.containerd._api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from bismuth_agent.containerd._api.containerd.types.task import task_pb2
from bismuth_agent.containerd.connection import Connection
from bismuth_agent.containerd.errors import ContainerdError, translated
from bismuth_agent.containerd.types import (
    PROCESS_TYPE_URL,
    ExitStatus,
    Mount,
    ProcessState,
    RuncOptions,
    Stdio,
    TaskMetrics,
    json_any,
    timestamp,
)

NO_STDIO = Stdio()
CGROUPS_V1_METRICS = "io.containerd.cgroups.v1.Metrics"
CGROUPS_V2_METRICS = "io.containerd.cgroups.v2.Metrics"


def _process(msg: task_pb2.Process) -> ProcessState:
    return ProcessState(
        container_id=msg.container_id or msg.id,  # List leaves container_id empty
        id=msg.id,
        pid=msg.pid,
        status=task_pb2.Status.Name(msg.status),
        exit_status=msg.exit_status,
        exited_at=timestamp(msg.exited_at),
    )


def decode_metrics(container_id: str, data: any_pb2.Any) -> TaskMetrics:
    """cpu, memory and pids of a task from containerd's cgroup v1 or v2 metrics."""
    kind = data.type_url.rsplit("/", 1)[-1]
    if kind == CGROUPS_V1_METRICS:
        v1 = cgroups_v1.Metrics.FromString(data.value)
        return TaskMetrics(
            container_id,
            cpu_usage_ns=v1.cpu.usage.total,
            memory_usage_bytes=v1.memory.usage.usage,
            memory_limit_bytes=v1.memory.usage.limit,
            pids=v1.pids.current,
        )
    if kind == CGROUPS_V2_METRICS:
        v2 = cgroups_v2.Metrics.FromString(data.value)
        return TaskMetrics(
            container_id,
            cpu_usage_ns=v2.cpu.usage_usec * 1000,
            memory_usage_bytes=v2.memory.usage,
            memory_limit_bytes=v2.memory.usage_limit,
            pids=v2.pids.current,
        )
    raise ContainerdError("UNKNOWN", f"unexpected metrics type {data.type_url!r}")


class TaskService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = tasks_pb2_grpc.TasksStub(conn.channel)

    @translated
    async def create(
        self,
        container_id: str,
        *,
        rootfs: Sequence[Mount],
        stdio: Stdio = NO_STDIO,
        options: RuncOptions | None = None,
    ) -> int:
        """Create the task (runc create: namespaces set up, process not started); its pid."""
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id,
            rootfs=[m.to_proto() for m in rootfs],
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            terminal=stdio.terminal,
            options=options.to_any() if options else None,
        )
        reply = await self._conn.call(self._stub.Create, request)
        return reply.pid

    @translated
    async def start(self, container_id: str, exec_id: str = "") -> int:
        """Start the task's init process (or an exec'd process); its pid."""
        request = tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id)
        reply = await self._conn.call(self._stub.Start, request)
        return reply.pid

    @translated
    async def kill(
        self, container_id: str, signal: int, *, all: bool = False, exec_id: str = ""
    ) -> None:
        """Send ``signal`` to the process (``all``: to every process of the task)."""
        request = tasks_pb2.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all
        )
        await self._conn.call(self._stub.Kill, request)

    @translated
    async def delete(self, container_id: str) -> ExitStatus:
        """Remove a stopped task; its exit status."""
        request = tasks_pb2.DeleteTaskRequest(container_id=container_id)
        reply = await self._conn.call(self._stub.Delete, request)
        return ExitStatus(reply.exit_status, timestamp(reply.exited_at))

    @translated
    async def wait(self, container_id: str, exec_id: str = "") -> ExitStatus:
        """Block until the process exits (no deadline); its exit status."""
        request = tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id)
        reply = await self._stub.Wait(request, **self._conn.stream())
        return ExitStatus(reply.exit_status, timestamp(reply.exited_at))

    @translated
    async def get(self, container_id: str, exec_id: str = "") -> ProcessState:
        request = tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id)
        reply = await self._conn.call(self._stub.Get, request)
        return _process(reply.process)

    @translated
    async def exec(
        self,
        container_id: str,
        exec_id: str,
        process: Mapping[str, Any],
        stdio: Stdio = NO_STDIO,
    ) -> None:
        """Add a process (an OCI ``process`` object) to the running task; ``start`` runs it."""
        request = tasks_pb2.ExecProcessRequest(
            container_id=container_id,
            exec_id=exec_id,
            spec=json_any(PROCESS_TYPE_URL, process),
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            terminal=stdio.terminal,
        )
        await self._conn.call(self._stub.Exec, request)

    @translated
    async def delete_process(self, container_id: str, exec_id: str) -> ExitStatus:
        """Remove an exited exec'd process (waits for its output to be copied)."""
        request = tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
        reply = await self._conn.call(self._stub.DeleteProcess, request)
        return ExitStatus(reply.exit_status, timestamp(reply.exited_at))

    @translated
    async def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        request = tasks_pb2.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True)
        await self._conn.call(self._stub.CloseIO, request)

    @translated
    async def pids(self, container_id: str) -> list[int]:
        request = tasks_pb2.ListPidsRequest(container_id=container_id)
        reply = await self._conn.call(self._stub.ListPids, request)
        return [p.pid for p in reply.processes]

    @translated
    async def metrics(self, container_ids: Sequence[str] = ()) -> list[TaskMetrics]:
        """cpu, memory and pids of these tasks (all tasks of the namespace if none given)."""
        filters = [f"id=={cid}" for cid in container_ids]
        reply = await self._conn.call(self._stub.Metrics, tasks_pb2.MetricsRequest(filters=filters))
        return [decode_metrics(m.id, m.data) for m in reply.metrics]

    @translated
    async def list(self, filter: str = "") -> list[ProcessState]:
        reply = await self._conn.call(self._stub.List, tasks_pb2.ListTasksRequest(filter=filter))
        return [_process(p) for p in reply.tasks]
