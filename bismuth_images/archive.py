"""OCI image-layout tar archives: wrap a root filesystem tar as one, and check one.

:func:`wrap_rootfs` streams the root filesystem tar once, hashing it (the ``diff_id``) while
gzip-compressing it (level 1 by default) into the layer blob, then writes the archive:
``oci-layout``, ``index.json`` and ``blobs/sha256/{layer,config,manifest}``, entries sorted by
name with a fixed mtime, owner 0:0 and fixed modes, so equal inputs give an identical archive.
The archive appears under its final name only once complete (written aside, then renamed).

:func:`inspect_archive` reads an archive back and checks every blob against its descriptor
(digest and size), the media types, and the image name; a build is skipped only when this
passes. :func:`open_layer` streams the layer's members, for checks of the root filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .oci import (
    CONFIG_MEDIA_TYPE,
    CONTAINERD_NAME_ANNOTATION,
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    LAYOUT_VERSION,
    MANIFEST_MEDIA_TYPE,
    ContainerDefaults,
    Descriptor,
    ImageDocuments,
    ImageError,
    ImageReference,
    Platform,
    blob_path,
    image_documents,
    layout_marker,
)

CHUNK = 1 << 20
ARCHIVE_MTIME = 0  # every entry of the wrapper tar; the layer keeps the rootfs's own times


@dataclass(frozen=True)
class Layer:
    """A compressed layer blob on disk, its descriptor, and the digest of its uncompressed tar."""

    path: Path
    descriptor: Descriptor
    diff_id: str


@dataclass(frozen=True)
class ImageSummary:
    """What an archive holds: the name, where it runs, and the descriptors of its blobs."""

    reference: str
    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layer: Descriptor
    diff_id: str


def compress_layer(rootfs: Path, destination: Path, level: int = 1) -> Layer:
    """Gzip ``rootfs`` into ``destination`` in one pass, hashing both sides."""
    raw, packed = hashlib.sha256(), hashlib.sha256()
    size = 0
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip, mtime 0
    with rootfs.open("rb") as src, destination.open("wb") as dst:

        def emit(data: bytes) -> None:
            nonlocal size
            packed.update(data)
            dst.write(data)
            size += len(data)

        while chunk := src.read(CHUNK):
            raw.update(chunk)
            emit(compressor.compress(chunk))
        emit(compressor.flush())
    descriptor = Descriptor(LAYER_MEDIA_TYPE, "sha256:" + packed.hexdigest(), size)
    return Layer(destination, descriptor, "sha256:" + raw.hexdigest())


def _entry(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = ARCHIVE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info


def write_image_layout(output: Path, layer: Layer, documents: ImageDocuments) -> None:
    """Write the image-layout tar to ``output`` atomically (aside first, then renamed)."""
    small = {
        "oci-layout": layout_marker(),
        "index.json": documents.index,
        blob_path(documents.config_descriptor): documents.config,
        blob_path(documents.manifest_descriptor): documents.manifest,
    }
    names = sorted([*small, blob_path(layer.descriptor), "blobs", "blobs/sha256"])
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the image from non-root readers
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for name in names:
                if name in small:
                    tar.addfile(_entry(name, len(small[name])), io.BytesIO(small[name]))
                elif name.startswith("blobs/sha256/"):
                    with layer.path.open("rb") as blob:
                        tar.addfile(_entry(name, layer.descriptor.size), blob)
                else:
                    tar.addfile(_entry(name, directory=True))
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def wrap_rootfs(
    rootfs: Path,
    output: Path,
    reference: ImageReference,
    platform: Platform,
    defaults: ContainerDefaults | None = None,
    *,
    created: str | None = None,
    created_by: str = "",
    level: int = 1,
) -> ImageSummary:
    """Turn a root filesystem tar into a single-layer OCI image-layout archive at ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".layer-") as scratch:
        layer = compress_layer(rootfs, Path(scratch) / "layer.tar.gz", level)
        documents = image_documents(
            layer.descriptor,
            layer.diff_id,
            platform,
            reference,
            defaults or ContainerDefaults(),
            created=created,
            created_by=created_by,
        )
        write_image_layout(output, layer, documents)
    return ImageSummary(
        reference.name,
        platform,
        documents.manifest_descriptor,
        documents.config_descriptor,
        layer.descriptor,
        layer.diff_id,
    )


# --- reading an archive back ----------------------------------------------------------------


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Regular files of the archive by name, tolerating a leading ``./`` (other tools' style)."""
    return {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}


def _hash(stream: IO[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def _read(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes:
    member = members.get(name)
    stream = tar.extractfile(member) if member else None
    if stream is None:
        raise ImageError(f"archive has no {name}")
    return stream.read()


def _blob(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], raw: dict[str, Any], media: str
) -> tuple[Descriptor, bytes | None]:
    """Check the blob a descriptor points at; small (JSON) blobs are returned, layers are not."""
    try:
        descriptor = Descriptor(raw["mediaType"], raw["digest"], int(raw["size"]))
    except (KeyError, TypeError, ValueError):
        raise ImageError(f"malformed descriptor {raw!r}") from None
    if descriptor.media_type != media:
        raise ImageError(f"{descriptor.digest} has media type {descriptor.media_type!r}")
    name = blob_path(descriptor)
    member = members.get(name)
    stream = tar.extractfile(member) if member else None
    if stream is None:
        raise ImageError(f"archive has no blob {name}")
    data = stream.read() if media != LAYER_MEDIA_TYPE else None
    digest, size = _hash(io.BytesIO(data)) if data is not None else _hash(stream)
    if (digest, size) != (descriptor.digest, descriptor.size):
        raise ImageError(f"blob {name} does not match its descriptor ({digest}, {size} bytes)")
    return descriptor, data


def _json(data: bytes | None, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data or b"")
    except ValueError as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _index_entry(index: dict[str, Any], reference: str | None) -> dict[str, Any]:
    if index.get("schemaVersion") != 2 or index.get("mediaType", INDEX_MEDIA_TYPE) != (
        INDEX_MEDIA_TYPE
    ):
        raise ImageError("index.json is not an OCI image index")
    entries = index.get("manifests") or []
    names = [(e.get("annotations") or {}).get(CONTAINERD_NAME_ANNOTATION) for e in entries]
    if reference is None and len(entries) == 1:
        return entries[0]
    if reference in names:
        return entries[names.index(reference)]
    raise ImageError(f"index.json names {names}, not {reference!r}")


def inspect_archive(path: Path, reference: str | None = None) -> ImageSummary:
    """Check an image-layout archive (optionally: that it holds ``reference``) and summarize it."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            return _inspect(tar, reference)
    except (OSError, tarfile.TarError) as exc:
        raise ImageError(f"{path}: not a readable tar archive: {exc}") from None


def _inspect(tar: tarfile.TarFile, reference: str | None) -> ImageSummary:
    members = _members(tar)
    marker = _json(_read(tar, members, "oci-layout"), "oci-layout")
    if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise ImageError(f"oci-layout version is {marker.get('imageLayoutVersion')!r}")
    entry = _index_entry(_json(_read(tar, members, "index.json"), "index.json"), reference)
    manifest_descriptor, data = _blob(tar, members, entry, MANIFEST_MEDIA_TYPE)
    manifest = _json(data, "the manifest")
    config_descriptor, data = _blob(tar, members, manifest.get("config") or {}, CONFIG_MEDIA_TYPE)
    config = _json(data, "the image config")
    layers = manifest.get("layers") or []
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(layers) != 1 or len(diff_ids) != 1:
        raise ImageError(f"expected one layer and one diff_id, got {len(layers)}, {len(diff_ids)}")
    layer_descriptor, _ = _blob(tar, members, layers[0], LAYER_MEDIA_TYPE)
    platform = Platform(config.get("architecture", ""), config.get("os", ""), config.get("variant"))
    name = (entry.get("annotations") or {}).get(CONTAINERD_NAME_ANNOTATION, "")
    return ImageSummary(
        name, platform, manifest_descriptor, config_descriptor, layer_descriptor, diff_ids[0]
    )


@contextlib.contextmanager
def open_layer(path: Path, reference: str | None = None) -> Iterator[tarfile.TarFile]:
    """The layer of a checked archive as a streaming tar (iterate it once, in order)."""
    summary = inspect_archive(path, reference)
    with tarfile.open(path, mode="r:") as outer:
        member = _members(outer).get(blob_path(summary.layer))
        stream = outer.extractfile(member) if member else None
        if stream is None:
            raise ImageError(f"{path}: layer blob is missing")
        with tarfile.open(fileobj=stream, mode="r|gz") as layer:
            yield layer
