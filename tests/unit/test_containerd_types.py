"""Decoding containerd's events, metrics and timestamps; encoding specs and options."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from bismuth_agent.containerd._api.cgroups.v1 import metrics_pb2 as v1
from bismuth_agent.containerd._api.cgroups.v2 import metrics_pb2 as v2
from bismuth_agent.containerd._api.containerd.events import task_pb2
from bismuth_agent.containerd._api.containerd.runc.options import oci_pb2
from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ContainerdError, ContainerdUnavailable
from bismuth_agent.containerd.events import TaskExit, TaskOOM, decode_event, topic_filters
from bismuth_agent.containerd.tasks import decode_metrics
from bismuth_agent.containerd.types import (
    SPEC_TYPE_URL,
    RuncOptions,
    json_any,
    spec_from_any,
    timestamp,
)


def _any(type_url: str, message: object) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString())  # type: ignore[attr-defined]


def test_task_exit_and_oom_events_decode() -> None:
    when = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    exit_event = task_pb2.TaskExit(container_id="c", id="c", pid=7, exit_status=137, exited_at=when)
    assert decode_event(_any("containerd.events.TaskExit", exit_event)) == TaskExit(
        "c", "c", 7, 137, datetime.fromtimestamp(1_700_000_000, UTC)
    )
    oom = task_pb2.TaskOOM(container_id="c")
    assert decode_event(_any("containerd.events.TaskOOM", oom)) == TaskOOM("c")
    assert decode_event(any_pb2.Any(type_url="containerd.events.ImageCreate")) is None


def test_topic_filters_scope_each_topic_to_the_namespace() -> None:
    assert topic_filters("bismuth", ["/tasks/exit", "/tasks/oom"]) == [
        'namespace=="bismuth",topic=="/tasks/exit"',
        'namespace=="bismuth",topic=="/tasks/oom"',
    ]
    assert topic_filters(None, ["/tasks/exit"]) == ['topic=="/tasks/exit"']


def test_cgroup_v1_and_v2_metrics_decode_to_the_same_shape() -> None:
    first = v1.Metrics(
        cpu=v1.CPUStat(usage=v1.CPUUsage(total=5_000)),
        memory=v1.MemoryStat(usage=v1.MemoryEntry(usage=4096, limit=8192)),
        pids=v1.PidsStat(current=3),
    )
    one = decode_metrics("c", _any("io.containerd.cgroups.v1.Metrics", first))
    assert (one.cpu_usage_ns, one.memory_usage_bytes, one.memory_limit_bytes, one.pids) == (
        5_000, 4096, 8192, 3,
    )  # fmt: skip
    second = v2.Metrics(
        cpu=v2.CPUStat(usage_usec=5),
        memory=v2.MemoryStat(usage=4096, usage_limit=8192),
        pids=v2.PidsStat(current=3),
    )
    two = decode_metrics("c", _any("io.containerd.cgroups.v2.Metrics", second))
    assert two == one
    with pytest.raises(ContainerdError, match="unexpected metrics type"):
        decode_metrics("c", any_pb2.Any(type_url="something.else"))


def test_zero_timestamps_are_none() -> None:
    assert timestamp(timestamp_pb2.Timestamp()) is None
    assert timestamp(timestamp_pb2.Timestamp(seconds=-62135596800)) is None
    assert timestamp(timestamp_pb2.Timestamp(seconds=60)) == datetime(1970, 1, 1, 0, 1, tzinfo=UTC)


def test_specs_travel_as_json_and_runc_options_as_protobuf() -> None:
    spec = {"ociVersion": "1.0.2", "process": {"args": ["sh"]}}
    packed = json_any(SPEC_TYPE_URL, spec)
    assert packed.type_url == SPEC_TYPE_URL and json.loads(packed.value) == spec
    assert spec_from_any(packed) == spec
    options = RuncOptions(root="/run/bismuth/runc", io_uid=100000, io_gid=100000).to_any()
    assert options.type_url == "containerd.runc.v1.Options"
    decoded = oci_pb2.Options.FromString(options.value)
    assert (decoded.root, decoded.io_uid, decoded.io_gid) == ("/run/bismuth/runc", 100000, 100000)


async def test_a_missing_socket_is_unavailable(tmp_path: Path) -> None:
    async with ContainerdClient(str(tmp_path / "absent.sock"), call_timeout=5) as client:
        with pytest.raises(ContainerdUnavailable) as raised:
            await client.version()
    assert raised.value.code == "UNAVAILABLE" and raised.value.status == 503
