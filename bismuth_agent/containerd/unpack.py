"""Unpacking an image's layers into committed snapshots named by their chain ids.

Each layer is applied by containerd's diff service onto a snapshot prepared on the previous
layer's, then committed under its chain id; layers already unpacked are skipped, so a second
unpack is cheap and concurrent unpacks of a shared base converge. A container then uses
``snapshots.prepare(<key>, parent=<top chain id>)``. The image config is labelled with the
top snapshot so containerd's garbage collector keeps the stack while the image exists.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import AlreadyExists, ImageError, NotFound
from bismuth_agent.containerd.manifests import (
    INDEX_TYPES,
    UNCOMPRESSED_LABEL,
    Manifest,
    chain_ids,
    diff_ids,
    parse_index,
    parse_manifest,
    select_platform,
    snapshot_label,
)
from bismuth_agent.containerd.snapshots import SnapshotService
from bismuth_agent.containerd.types import DEFAULT_SNAPSHOTTER, Descriptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageLayers:
    """What unpacking an image needs: its manifest, and the layers' diff and chain ids."""

    name: str
    manifest: Manifest
    diff_ids: tuple[str, ...]
    chain_ids: tuple[str, ...]

    @property
    def top(self) -> str:
        """The chain id of the whole layer stack: the parent of a container's rootfs."""
        return self.chain_ids[-1] if self.chain_ids else ""


async def resolve_manifest(
    client: ContainerdClient, target: Descriptor, architecture: str | None = None
) -> Manifest:
    """The image manifest for this host from an image target (a manifest or an index)."""
    for _ in range(4):  # an index of indexes is allowed, but not unbounded
        data = await client.content.read_all(target.digest)
        if target.media_type not in INDEX_TYPES:
            return parse_manifest(data)
        target = select_platform(parse_index(data), architecture)
    raise ImageError("image index nests too deeply")


async def image_layers(client: ContainerdClient, image_name: str) -> ImageLayers:
    try:
        image = await client.images.get(image_name)
        manifest = await resolve_manifest(client, image.target)
        ids = diff_ids(await client.content.read_all(manifest.config.digest))
    except NotFound as exc:
        raise ImageError(f"image {image_name!r} is not available: {exc.details}") from None
    if len(ids) != len(manifest.layers):
        raise ImageError(
            f"image {image_name!r}: {len(manifest.layers)} layers but {len(ids)} diff ids"
        )
    return ImageLayers(image_name, manifest, tuple(ids), tuple(chain_ids(ids)))


async def unpack(
    client: ContainerdClient, image_name: str, snapshotter: str = DEFAULT_SNAPSHOTTER
) -> str:
    """Unpack every layer of the image that is not yet; returns the top chain id."""
    layers = await image_layers(client, image_name)
    async with client.lease() as leased:
        snapshots = SnapshotService(leased.conn, snapshotter)
        parent = ""
        for layer, diff_id, chain in zip(
            layers.manifest.layers, layers.diff_ids, layers.chain_ids, strict=True
        ):
            if not await snapshots.exists(chain):
                await _apply_layer(leased, snapshots, layer, diff_id, chain, parent)
            parent = chain
            await leased.content.set_labels(layer.digest, {UNCOMPRESSED_LABEL: diff_id})
        if layers.top:
            config = layers.manifest.config.digest
            await leased.content.set_labels(config, {snapshot_label(snapshotter): layers.top})
    log.info("image unpacked", extra={"image": image_name, "snapshot": layers.top})
    return layers.top


async def _apply_layer(
    client: ContainerdClient,
    snapshots: SnapshotService,
    layer: Descriptor,
    diff_id: str,
    chain: str,
    parent: str,
) -> None:
    key = f"extract-{uuid.uuid4().hex}-{chain}"
    mounts = await snapshots.prepare(key, parent)
    try:
        applied = await client.diff.apply(layer, mounts)
        if applied.digest != diff_id:
            raise ImageError(
                f"layer {layer.digest} unpacked to {applied.digest}, "
                f"but the image config says {diff_id}"
            )
        with contextlib.suppress(AlreadyExists):  # a concurrent unpack committed it first
            await snapshots.commit(chain, key)
    finally:
        await snapshots.discard(key)
