"""containerd's snapshotter (layered filesystems) and diff service (applying a layer).

``prepare`` makes a writable (active) snapshot on a committed parent and returns the mounts
that expose it; ``commit`` turns an active snapshot into a committed one that can be a
parent. Image layers are unpacked by ``diff.apply`` onto the mounts of a prepared snapshot.
All calls default to the ``overlayfs`` snapshotter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf import field_mask_pb2

from bismuth_agent.containerd._api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from bismuth_agent.containerd._api.containerd.services.snapshots.v1 import (
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from bismuth_agent.containerd.connection import Connection
from bismuth_agent.containerd.errors import NotFound, translated
from bismuth_agent.containerd.types import (
    DEFAULT_SNAPSHOTTER,
    Descriptor,
    Mount,
    SnapshotInfo,
    timestamp,
)

GC_ROOT_LABEL = "containerd.io/gc.root"


def _info(msg: snapshots_pb2.Info) -> SnapshotInfo:
    return SnapshotInfo(
        msg.name,
        msg.parent,
        snapshots_pb2.Kind.Name(msg.kind),
        dict(msg.labels),
        timestamp(msg.created_at),
    )


def _mounts(mounts: Iterable[object]) -> list[Mount]:
    return [Mount.from_proto(m) for m in mounts]  # type: ignore[arg-type]


class SnapshotService:
    def __init__(self, conn: Connection, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self._conn = conn
        self.snapshotter = snapshotter
        self._stub = snapshots_pb2_grpc.SnapshotsStub(conn.channel)

    @translated
    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new active (writable) snapshot on ``parent``; its mounts."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        reply = await self._conn.call(self._stub.Prepare, request)
        return _mounts(reply.mounts)

    @translated
    async def view(
        self, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A read-only view of a committed snapshot; its mounts."""
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        reply = await self._conn.call(self._stub.View, request)
        return _mounts(reply.mounts)

    @translated
    async def mounts(self, key: str) -> list[Mount]:
        request = snapshots_pb2.MountsRequest(snapshotter=self.snapshotter, key=key)
        reply = await self._conn.call(self._stub.Mounts, request)
        return _mounts(reply.mounts)

    @translated
    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``."""
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self.snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self._conn.call(self._stub.Commit, request)

    @translated
    async def remove(self, key: str) -> None:
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        await self._conn.call(self._stub.Remove, request)

    async def discard(self, key: str) -> None:
        """Remove the snapshot if it exists (teardown: absent is success)."""
        with contextlib.suppress(NotFound):
            await self.remove(key)

    @translated
    async def stat(self, key: str) -> SnapshotInfo:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        reply = await self._conn.call(self._stub.Stat, request)
        return _info(reply.info)

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except NotFound:
            return False
        return True

    @translated
    async def set_labels(self, key: str, labels: Mapping[str, str]) -> SnapshotInfo:
        request = snapshots_pb2.UpdateSnapshotRequest(
            snapshotter=self.snapshotter,
            info=snapshots_pb2.Info(name=key, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self._conn.call(self._stub.Update, request)
        return _info(reply.info)

    @translated
    async def list(self, filters: Iterable[str] = ()) -> list[SnapshotInfo]:
        request = snapshots_pb2.ListSnapshotsRequest(
            snapshotter=self.snapshotter, filters=list(filters)
        )
        found: list[SnapshotInfo] = []
        async for reply in self._stub.List(request, **self._conn.stream()):
            found.extend(_info(info) for info in reply.info)
        return found


class DiffService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = diff_pb2_grpc.DiffStub(conn.channel)

    @translated
    async def apply(self, layer: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Unpack the layer blob (from the content store) onto ``mounts``.

        Returns the applied descriptor: its digest is the uncompressed layer's (the diff id).
        """
        request = diff_pb2.ApplyRequest(
            diff=layer.to_proto(), mounts=[m.to_proto() for m in mounts]
        )
        reply = await self._stub.Apply(request, **self._conn.stream())  # large layers: no deadline
        return Descriptor.from_proto(reply.applied)
