"""containerd's metadata records: images (name -> target descriptor) and containers.

A container record is only configuration (OCI spec, runtime, snapshot key); processes run as
tasks (``tasks.py``). Deleting an absent record raises ``NotFound``; callers tearing down use
``contextlib.suppress(NotFound)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import field_mask_pb2

from bismuth_agent.containerd._api.containerd.services.containers.v1 import (
    containers_pb2,
    containers_pb2_grpc,
)
from bismuth_agent.containerd._api.containerd.services.images.v1 import (
    images_pb2,
    images_pb2_grpc,
)
from bismuth_agent.containerd.connection import Connection
from bismuth_agent.containerd.errors import AlreadyExists, translated
from bismuth_agent.containerd.types import (
    DEFAULT_SNAPSHOTTER,
    RUNC_RUNTIME,
    SPEC_TYPE_URL,
    Container,
    Descriptor,
    Image,
    RuncOptions,
    json_any,
    spec_from_any,
    timestamp,
)


def _image(msg: images_pb2.Image) -> Image:
    return Image(
        msg.name,
        Descriptor.from_proto(msg.target),
        dict(msg.labels),
        timestamp(msg.created_at),
        timestamp(msg.updated_at),
    )


def _container(msg: containers_pb2.Container) -> Container:
    return Container(
        id=msg.id,
        image=msg.image,
        spec=spec_from_any(msg.spec),
        snapshotter=msg.snapshotter,
        snapshot_key=msg.snapshot_key,
        runtime=msg.runtime.name,
        labels=dict(msg.labels),
        created_at=timestamp(msg.created_at),
    )


class ImageService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = images_pb2_grpc.ImagesStub(conn.channel)

    @translated
    async def get(self, name: str) -> Image:
        reply = await self._conn.call(self._stub.Get, images_pb2.GetImageRequest(name=name))
        return _image(reply.image)

    @translated
    async def list(self, filters: Iterable[str] = ()) -> list[Image]:
        request = images_pb2.ListImagesRequest(filters=list(filters))
        reply = await self._conn.call(self._stub.List, request)
        return [_image(image) for image in reply.images]

    @translated
    async def create(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> Image:
        """Create the record; ``AlreadyExists`` if the name is taken (see ``put``)."""
        image = images_pb2.Image(name=name, target=target.to_proto(), labels=dict(labels or {}))
        reply = await self._conn.call(self._stub.Create, images_pb2.CreateImageRequest(image=image))
        return _image(reply.image)

    @translated
    async def update(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> Image:
        """Point an existing record at ``target`` (and replace its labels if given)."""
        image = images_pb2.Image(name=name, target=target.to_proto(), labels=dict(labels or {}))
        paths = ["target"] + (["labels"] if labels is not None else [])
        request = images_pb2.UpdateImageRequest(
            image=image, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        reply = await self._conn.call(self._stub.Update, request)
        return _image(reply.image)

    async def put(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> Image:
        """Create the record, or repoint it if the name exists (what import and pull do)."""
        try:
            return await self.create(name, target, labels)
        except AlreadyExists:
            return await self.update(name, target, labels)

    @translated
    async def delete(self, name: str, sync: bool = False) -> None:
        """Delete the record; ``sync`` waits for garbage collection of what it held."""
        request = images_pb2.DeleteImageRequest(name=name, sync=sync)
        await self._conn.call(self._stub.Delete, request)


class ContainerService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = containers_pb2_grpc.ContainersStub(conn.channel)

    @translated
    async def create(
        self,
        container_id: str,
        *,
        spec: Mapping[str, Any],
        snapshot_key: str,
        image: str = "",
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        runtime: str = RUNC_RUNTIME,
        runtime_options: RuncOptions | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Container:
        """Record a container: its OCI runtime spec, runtime and rootfs snapshot key."""
        record = containers_pb2.Container(
            id=container_id,
            image=image,
            labels=dict(labels or {}),
            runtime=containers_pb2.Container.Runtime(
                name=runtime,
                options=runtime_options.to_any() if runtime_options else None,
            ),
            spec=json_any(SPEC_TYPE_URL, spec),
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
        )
        request = containers_pb2.CreateContainerRequest(container=record)
        reply = await self._conn.call(self._stub.Create, request)
        return _container(reply.container)

    @translated
    async def get(self, container_id: str) -> Container:
        request = containers_pb2.GetContainerRequest(id=container_id)
        reply = await self._conn.call(self._stub.Get, request)
        return _container(reply.container)

    @translated
    async def list(self, filters: Iterable[str] = ()) -> list[Container]:
        request = containers_pb2.ListContainersRequest(filters=list(filters))
        reply = await self._conn.call(self._stub.List, request)
        return [_container(c) for c in reply.containers]

    @translated
    async def delete(self, container_id: str) -> None:
        request = containers_pb2.DeleteContainerRequest(id=container_id)
        await self._conn.call(self._stub.Delete, request)
