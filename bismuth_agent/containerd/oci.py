"""Importing an OCI image-layout archive (a tar of oci-layout, index.json, blobs/sha256/...).

The manifest chosen from ``index.json`` (by image name annotation, or the only one; an index
is resolved to this host's platform), its config and its layers are streamed into the
content store under a lease, with the expected digest and size that containerd verifies,
and the image record is pointed at the manifest. ``unpack()`` then makes snapshots of it.
"""

from __future__ import annotations

import asyncio
import logging
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.content import READ_CHUNK
from bismuth_agent.containerd.errors import ContainerdError, ImageError
from bismuth_agent.containerd.manifests import (
    IMAGE_NAME_ANNOTATION,
    INDEX_TYPES,
    REF_NAME_ANNOTATION,
    load_json,
    manifest_labels,
    media_type,
    parse_index,
    parse_manifest,
    select_platform,
)
from bismuth_agent.containerd.types import Descriptor, Image

log = logging.getLogger(__name__)


class ImageLayout:
    """An open OCI image-layout tar; blocking, so it is used from worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close())
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(f"{path}: not a readable tar archive: {exc}") from None
        self._members = {m.name.removeprefix("./"): m for m in self._tar.getmembers() if m.isfile()}
        if "oci-layout" not in self._members or "index.json" not in self._members:
            raise ImageError(f"{path}: not an OCI image layout (no oci-layout or index.json)")

    def close(self) -> None:
        self._tar.close()

    def open_blob(self, digest: str) -> IO[bytes]:
        algorithm, _, hexdigest = digest.partition(":")
        member = self._members.get(f"blobs/{algorithm}/{hexdigest}")
        stream = self._tar.extractfile(member) if member else None
        if stream is None:
            raise ImageError(f"{self.path}: blob {digest} is missing")
        return stream

    def read(self, name: str) -> bytes:
        stream = self._tar.extractfile(self._members[name])
        assert stream is not None
        return stream.read()

    def read_blob(self, descriptor: Descriptor) -> bytes:
        data = self.open_blob(descriptor.digest).read()
        if len(data) != descriptor.size:
            raise ImageError(f"{self.path}: blob {descriptor.digest} has the wrong size")
        return data


def _annotated_name(entry: dict[str, object]) -> str:
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return ""
    return str(annotations.get(IMAGE_NAME_ANNOTATION) or annotations.get(REF_NAME_ANNOTATION) or "")


def choose_entry(index: dict[str, object], name: str | None) -> tuple[Descriptor, str]:
    """The index.json entry to import and the image name to record."""
    entries = [e for e in index.get("manifests") or () if isinstance(e, dict)]  # type: ignore[attr-defined]
    named = [e for e in entries if name and _annotated_name(e) in (name, name.rsplit(":", 1)[-1])]
    if named:
        chosen = named[0]
    elif len(entries) == 1:
        chosen = entries[0]
    else:
        found = ", ".join(_annotated_name(e) or "?" for e in entries) or "no manifests"
        raise ImageError(f"cannot tell which image to import (index.json lists {found})")
    image_name = name or _annotated_name(chosen)
    if not image_name:
        raise ImageError("the archive does not name its image: pass a name")
    return Descriptor.from_json(chosen), image_name


async def _chunks(layout: ImageLayout, digest: str) -> AsyncIterator[bytes]:
    stream = await asyncio.to_thread(layout.open_blob, digest)
    while chunk := await asyncio.to_thread(stream.read, READ_CHUNK):
        yield chunk


async def _store(
    client: ContainerdClient,
    layout: ImageLayout,
    descriptor: Descriptor,
    labels: dict[str, str] | None = None,
) -> None:
    ref = f"import-{descriptor.digest}"
    try:
        await client.content.write(
            ref,
            _chunks(layout, descriptor.digest),
            expected=descriptor.digest,
            total=descriptor.size,
            labels=labels,
        )
    except ContainerdError as exc:
        if exc.code in ("FAILED_PRECONDITION", "INVALID_ARGUMENT"):
            raise ImageError(
                f"blob {descriptor.digest} does not match its digest or size: {exc.details}"
            ) from None
        raise


async def _resolve(layout: ImageLayout, target: Descriptor) -> tuple[Descriptor, bytes]:
    """Follow indexes to this host's manifest; the manifest's descriptor and bytes."""
    for _ in range(4):
        data = await asyncio.to_thread(layout.read_blob, target)
        kind = media_type(load_json(data, f"blob {target.digest}"), target.media_type)
        if kind not in INDEX_TYPES:
            return Descriptor(kind, target.digest, target.size), data
        target = select_platform(parse_index(data))
    raise ImageError("image index nests too deeply")


async def import_oci_archive(
    client: ContainerdClient, path: str | Path, name: str | None = None
) -> Image:
    """Store the archive's image in containerd and record it as ``name`` (or its own name)."""
    layout = await asyncio.to_thread(ImageLayout, Path(path))
    try:
        index = load_json(await asyncio.to_thread(layout.read, "index.json"), "index.json")
        entry, image_name = choose_entry(index, name)
        target, data = await _resolve(layout, entry)
        manifest = parse_manifest(data)
        async with client.lease() as leased:
            for blob in (manifest.config, *manifest.layers):
                await _store(leased, layout, blob)
            await _store(leased, layout, target, manifest_labels(manifest))
            image = await leased.images.put(image_name, target)
    finally:
        await asyncio.to_thread(layout.close)
    log.info("image imported", extra={"image": image_name, "digest": target.digest})
    return image
