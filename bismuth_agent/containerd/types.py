"""Typed, frozen views of containerd objects, and their conversions to and from protobuf.

Callers of the adapter see only these classes; the generated protobuf messages stay inside
``bismuth_agent.containerd``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any as AnyValue

from google.protobuf import any_pb2, timestamp_pb2

from bismuth_agent.containerd._api.containerd.runc.options import oci_pb2
from bismuth_agent.containerd._api.containerd.types import descriptor_pb2, mount_pb2

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
RUNC_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"
_GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z, what Go sends for "never"


def timestamp(value: timestamp_pb2.Timestamp) -> datetime | None:
    """A protobuf timestamp as an aware datetime; None when unset (zero, or Go's zero time)."""
    if value.seconds <= _GO_ZERO_TIME or (value.seconds == 0 and value.nanos == 0):
        return None
    return value.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, msg: descriptor_pb2.Descriptor) -> Descriptor:
        return cls(msg.media_type, msg.digest, msg.size, dict(msg.annotations))

    @classmethod
    def from_json(cls, value: Mapping[str, AnyValue]) -> Descriptor:
        return cls(
            str(value["mediaType"]),
            str(value["digest"]),
            int(value["size"]),
            dict(value.get("annotations") or {}),
        )

    def to_proto(self) -> descriptor_pb2.Descriptor:
        return descriptor_pb2.Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=self.size,
            annotations=dict(self.annotations),
        )


@dataclass(frozen=True)
class Mount:
    """One mount of a snapshot (as containerd hands it to runc or to ``mount``)."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""

    @classmethod
    def from_proto(cls, msg: mount_pb2.Mount) -> Mount:
        return cls(msg.type, msg.source, tuple(msg.options), msg.target)

    def to_proto(self) -> mount_pb2.Mount:
        return mount_pb2.Mount(
            type=self.type, source=self.source, target=self.target, options=list(self.options)
        )


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class IngestStatus:
    """An unfinished content write (an ingest), as the Write stream or Status reports it."""

    ref: str
    offset: int
    total: int
    expected: str = ""


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "VIEW", "ACTIVE" or "COMMITTED"
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class RuncOptions:
    """Options of the runc shim (``containerd.runc.v1.Options``) that Bismuth sets."""

    root: str = ""  # runc's state directory; empty = the shim's default
    io_uid: int = 0  # owner of the stdio pipes (the container's root in a user namespace)
    io_gid: int = 0
    systemd_cgroup: bool = False
    binary_name: str = ""

    def to_any(self) -> any_pb2.Any:
        options = oci_pb2.Options(
            root=self.root,
            io_uid=self.io_uid,
            io_gid=self.io_gid,
            systemd_cgroup=self.systemd_cgroup,
            binary_name=self.binary_name,
        )
        return any_pb2.Any(type_url=RUNC_OPTIONS_TYPE_URL, value=options.SerializeToString())


@dataclass(frozen=True)
class Container:
    """A containerd container record (metadata only: no process runs until a task starts)."""

    id: str
    image: str
    spec: Mapping[str, AnyValue]
    snapshotter: str
    snapshot_key: str
    runtime: str = RUNC_RUNTIME
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class ProcessState:
    """A task's init process or an exec'd process, as containerd reports it."""

    container_id: str
    id: str
    pid: int
    status: str  # "CREATED", "RUNNING", "STOPPED", "PAUSED", "PAUSING" or "UNKNOWN"
    exit_status: int = 0
    exited_at: datetime | None = None


@dataclass(frozen=True)
class ExitStatus:
    code: int
    exited_at: datetime | None = None


@dataclass(frozen=True)
class TaskMetrics:
    """Resource use of one task's cgroup."""

    container_id: str
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_limit_bytes: int
    pids: int


@dataclass(frozen=True)
class Stdio:
    """Where a process's stdio goes: FIFO paths or ``file://`` / ``binary://`` URIs, or ""."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


def json_any(type_url: str, value: Mapping[str, AnyValue]) -> any_pb2.Any:
    """An Any holding JSON, as containerd's typeurl encodes non-protobuf types (OCI specs)."""
    return any_pb2.Any(type_url=type_url, value=json.dumps(value).encode())


def spec_from_any(value: any_pb2.Any) -> dict[str, AnyValue]:
    if not value.value:
        return {}
    loaded = json.loads(value.value)
    return loaded if isinstance(loaded, dict) else {}
