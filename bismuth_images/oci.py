"""The OCI image model of a single-layer image: digests, config, manifest, index, as pure values.

Nothing here touches the filesystem. :mod:`bismuth_images.archive` streams the layer and writes the
image-layout tar from the JSON documents built here; the unit tests check these documents
against the OCI image spec (media types, digests, ``diff_ids``, annotations).

Documents are serialized canonically (sorted keys, no spaces), so the same inputs always give
the same bytes and therefore the same digests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

# Annotations on the index entry: the tag (OCI) and the full reference (containerd's importer).
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# dpkg architecture -> (OCI architecture, OCI variant); the table of the OCI image spec.
_DPKG_TO_OCI: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v5"),
    "i386": ("386", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64el": ("mips64le", None),
}


class ImageError(Exception):
    """An image cannot be built or an archive is not a valid image of the expected name."""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Platform:
    """The platform an image runs on, as OCI spells it."""

    architecture: str
    os: str = "linux"
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True)
class ImageReference:
    """``registry/repository:tag``; ``tag`` is what ``org.opencontainers.image.ref.name`` holds."""

    name: str
    tag: str

    @classmethod
    def parse(cls, reference: str) -> ImageReference:
        repository, colon, tag = reference.rpartition(":")
        if not colon or not repository or not tag or "/" in tag:
            raise ImageError(f"image reference {reference!r} needs a tag (name:tag)")
        return cls(name=reference, tag=tag)


@dataclass(frozen=True)
class ContainerDefaults:
    """The ``config`` section of the image config: what a runtime uses unless told otherwise."""

    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8")
    working_dir: str = "/"
    user: str = "1000:1000"
    cmd: tuple[str, ...] = ("/usr/bin/python3",)

    def to_json(self) -> dict[str, Any]:
        return {
            "Env": list(self.env),
            "WorkingDir": self.working_dir,
            "User": self.user,
            "Cmd": list(self.cmd),
        }


def platform_for_dpkg(architecture: str) -> Platform:
    """The OCI platform of a dpkg architecture name (``dpkg --print-architecture``)."""
    try:
        arch, variant = _DPKG_TO_OCI[architecture]
    except KeyError:
        raise ImageError(f"no OCI name known for dpkg architecture {architecture!r}") from None
    return Platform(architecture=arch, variant=variant)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(document: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal documents give equal bytes (and digests)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def describe(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type=media_type, digest=sha256_digest(data), size=len(data))


def layout_marker() -> bytes:
    """The ``oci-layout`` file."""
    return canonical_json({"imageLayoutVersion": LAYOUT_VERSION})


def image_config(
    diff_id: str,
    platform: Platform,
    defaults: ContainerDefaults,
    *,
    created: str | None = None,
    created_by: str = "",
) -> dict[str, Any]:
    """The image config: platform, runtime defaults, and the layer's uncompressed digest."""
    config: dict[str, Any] = {
        **platform.to_json(),
        "config": defaults.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": created_by}] if created_by else [],
    }
    if created:
        config["created"] = created
        for entry in config["history"]:
            entry["created"] = created
    return config


def image_manifest(config: Descriptor, layer: Descriptor) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }


def image_index(
    manifest: Descriptor, platform: Platform, reference: ImageReference
) -> dict[str, Any]:
    """``index.json``: one manifest, named for OCI tools (tag) and for containerd (full name)."""
    entry = {
        **manifest.to_json(),
        "platform": platform.to_json(),
        "annotations": {
            REF_NAME_ANNOTATION: reference.tag,
            CONTAINERD_NAME_ANNOTATION: reference.name,
        },
    }
    return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]}


@dataclass(frozen=True)
class ImageDocuments:
    """The three JSON blobs of an image (serialized) and the descriptors that point at them."""

    config: bytes
    manifest: bytes
    index: bytes
    config_descriptor: Descriptor
    manifest_descriptor: Descriptor


def image_documents(
    layer: Descriptor,
    diff_id: str,
    platform: Platform,
    reference: ImageReference,
    defaults: ContainerDefaults,
    *,
    created: str | None = None,
    created_by: str = "",
) -> ImageDocuments:
    """Config, manifest and index of a single-layer image whose compressed layer is ``layer``."""
    if layer.media_type != LAYER_MEDIA_TYPE:
        raise ImageError(f"layer media type {layer.media_type!r} is not {LAYER_MEDIA_TYPE!r}")
    config = canonical_json(
        image_config(diff_id, platform, defaults, created=created, created_by=created_by)
    )
    config_descriptor = describe(CONFIG_MEDIA_TYPE, config)
    manifest = canonical_json(image_manifest(config_descriptor, layer))
    manifest_descriptor = describe(MANIFEST_MEDIA_TYPE, manifest)
    index = canonical_json(image_index(manifest_descriptor, platform, reference))
    return ImageDocuments(config, manifest, index, config_descriptor, manifest_descriptor)


def blob_path(descriptor: Descriptor) -> str:
    """Where a blob lives inside an image layout."""
    algorithm, _, hexdigest = descriptor.digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"
