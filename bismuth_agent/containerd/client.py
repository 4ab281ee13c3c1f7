"""The async containerd client: one gRPC channel over containerd's unix socket.

``ContainerdClient(address, namespace)`` sends the namespace with every call (the
``containerd-namespace`` header) and groups containerd's services by concern::

    async with ContainerdClient("/run/containerd/containerd.sock") as ctrd:
        await ctrd.ensure_namespace()
        image = await ctrd.images.get("bismuth.local/python:3.11")
        mounts = await ctrd.create_container(cid, spec=spec, parent=top_chain_id)
        pid = await ctrd.tasks.create(cid, rootfs=mounts, stdio=Stdio(stdout=...))
        await ctrd.tasks.start(cid)

Work that creates unreferenced content or snapshots (image import, unpack) runs under a
lease so containerd's garbage collector keeps it until it is referenced: ``async with
ctrd.lease() as leased: ...`` gives a client whose calls carry the lease.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import empty_pb2

from bismuth_agent.containerd._api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from bismuth_agent.containerd._api.containerd.services.namespaces.v1 import (
    namespace_pb2,
    namespace_pb2_grpc,
)
from bismuth_agent.containerd._api.containerd.services.version.v1 import (
    version_pb2_grpc,
)
from bismuth_agent.containerd.connection import Connection
from bismuth_agent.containerd.content import ContentStore
from bismuth_agent.containerd.errors import AlreadyExists, NotFound, translated
from bismuth_agent.containerd.events import EventService
from bismuth_agent.containerd.metadata import ContainerService, ImageService
from bismuth_agent.containerd.snapshots import DiffService, SnapshotService
from bismuth_agent.containerd.tasks import TaskService
from bismuth_agent.containerd.types import DEFAULT_SNAPSHOTTER, Mount, RuncOptions

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "bismuth"
_MAX_MESSAGE = 16 * 1024 * 1024  # containerd's own gRPC limit


@dataclass(frozen=True)
class Version:
    version: str
    revision: str


def channel_target(address: str) -> str:
    """A gRPC target for containerd's address (a socket path, or already ``unix:...``)."""
    return address if address.startswith("unix:") else f"unix:{address}"


class ContainerdClient:
    """containerd's API in one namespace; ``close()`` (or ``async with``) ends the channel."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        call_timeout: float | None = 60.0,
    ) -> None:
        channel = grpc.aio.insecure_channel(
            channel_target(address),
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ],
        )
        self.address = address
        self._owns_channel = True
        self._bind(Connection(channel, namespace, call_timeout=call_timeout))

    def _bind(self, conn: Connection) -> None:
        self.conn = conn
        self.namespace = conn.namespace
        self.images = ImageService(conn)
        self.containers = ContainerService(conn)
        self.content = ContentStore(conn)
        self.snapshots = SnapshotService(conn)
        self.diff = DiffService(conn)
        self.tasks = TaskService(conn)
        self.events = EventService(conn)

    def derive(self, *, namespace: str | None = None, lease: str | None = None) -> ContainerdClient:
        """A client on the same channel for another namespace or with a lease header."""
        clone = object.__new__(ContainerdClient)
        clone.address = self.address
        clone._owns_channel = False
        clone._bind(self.conn.with_(namespace=namespace, lease=lease))
        return clone

    async def close(self) -> None:
        if self._owns_channel:
            await self.conn.channel.close()

    async def __aenter__(self) -> ContainerdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @translated
    async def version(self) -> Version:
        stub = version_pb2_grpc.VersionStub(self.conn.channel)
        reply = await stub.Version(empty_pb2.Empty(), **self.conn.unary())
        return Version(reply.version, reply.revision)

    @translated
    async def ensure_namespace(self, labels: dict[str, str] | None = None) -> None:
        """Create this client's namespace unless it exists."""
        stub = namespace_pb2_grpc.NamespacesStub(self.conn.channel)
        request = namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=self.namespace, labels=labels or {})
        )
        with contextlib.suppress(AlreadyExists):
            await self.conn.call(stub.Create, request)

    @translated
    async def list_namespaces(self) -> list[str]:
        stub = namespace_pb2_grpc.NamespacesStub(self.conn.channel)
        reply = await stub.List(namespace_pb2.ListNamespacesRequest(), **self.conn.unary())
        return sorted(ns.name for ns in reply.namespaces)

    @translated
    async def delete_namespace(self, name: str | None = None) -> None:
        """Delete an (empty) namespace; absent is success."""
        stub = namespace_pb2_grpc.NamespacesStub(self.conn.channel)
        request = namespace_pb2.DeleteNamespaceRequest(name=name or self.namespace)
        with contextlib.suppress(NotFound):
            await self.conn.call(stub.Delete, request)

    @translated
    async def create_lease(self, lease_id: str, expire: timedelta | None = None) -> str:
        """A lease that protects what is created under it; it expires after ``expire``."""
        labels = {}
        if expire is not None:
            when = datetime.now(UTC) + expire
            labels["containerd.io/gc.expire"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        stub = leases_pb2_grpc.LeasesStub(self.conn.channel)
        await self.conn.call(stub.Create, leases_pb2.CreateRequest(id=lease_id, labels=labels))
        return lease_id

    @translated
    async def list_leases(self) -> list[str]:
        stub = leases_pb2_grpc.LeasesStub(self.conn.channel)
        reply = await self.conn.call(stub.List, leases_pb2.ListRequest())
        return sorted(lease.id for lease in reply.leases)

    @translated
    async def delete_lease(self, lease_id: str, sync: bool = False) -> None:
        stub = leases_pb2_grpc.LeasesStub(self.conn.channel)
        with contextlib.suppress(NotFound):
            await self.conn.call(stub.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=sync))

    async def create_container(
        self,
        container_id: str,
        *,
        spec: Mapping[str, Any],
        parent: str,
        image: str = "",
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        runtime_options: RuncOptions | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Mount]:
        """The container's record and its rootfs snapshot (key = container id); its mounts.

        The record comes first and names the snapshot's key, so the snapshot is referenced
        from the moment it exists (an active snapshot nothing references is fair game for
        containerd's garbage collector): no lease is needed. Steps already done are reused,
        so a retried create converges; a failed one leaves a record for
        ``delete_container``.
        """
        await self.create_record(
            container_id,
            spec=spec,
            image=image,
            snapshotter=snapshotter,
            runtime_options=runtime_options,
            labels=labels,
        )
        return await self.prepare_rootfs(container_id, parent, snapshotter)

    async def create_record(
        self,
        container_id: str,
        *,
        spec: Mapping[str, Any],
        image: str = "",
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        runtime_options: RuncOptions | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """The container's record, naming its rootfs snapshot (key = container id); an
        existing one is kept."""
        with contextlib.suppress(AlreadyExists):
            await self.containers.create(
                container_id,
                spec=spec,
                snapshot_key=container_id,
                image=image,
                snapshotter=snapshotter,
                runtime_options=runtime_options,
                labels=labels,
            )

    async def prepare_rootfs(
        self, container_id: str, parent: str, snapshotter: str = DEFAULT_SNAPSHOTTER
    ) -> list[Mount]:
        """The container's rootfs snapshot (key = container id) on ``parent``, or the one
        made before; its mounts. Until the container's record exists, call it on a client
        with a lease (:meth:`derive`): nothing else references the snapshot."""
        snapshots = SnapshotService(self.conn, snapshotter)
        try:
            return await snapshots.prepare(container_id, parent)
        except AlreadyExists:
            return await snapshots.mounts(container_id)

    async def delete_container(
        self, container_id: str, snapshotter: str = DEFAULT_SNAPSHOTTER
    ) -> None:
        """Remove the container record and its rootfs snapshot; absent ones are fine.

        Its task must be gone first (``tasks.delete``).
        """
        with contextlib.suppress(NotFound):
            await self.containers.delete(container_id)
        await SnapshotService(self.conn, snapshotter).discard(container_id)

    @contextlib.asynccontextmanager
    async def lease(
        self, expire: timedelta = timedelta(hours=1)
    ) -> AsyncIterator[ContainerdClient]:
        """A client whose calls run under a fresh lease, deleted on exit."""
        lease_id = await self.create_lease(f"bismuth-{uuid.uuid4().hex}", expire)
        try:
            yield self.derive(lease=lease_id)
        finally:
            await self.delete_lease(lease_id)
