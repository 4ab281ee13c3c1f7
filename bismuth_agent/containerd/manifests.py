"""OCI and Docker image manifests: media types, platform choice, chain ids, GC labels.

Pure functions over manifest JSON; reading blobs is left to callers. The labels are the ones
containerd's garbage collector follows: an image holds its target, a manifest holds its
config and layers (``containerd.io/gc.ref.content.*``), and a config holds the snapshot its
layers were unpacked to (``containerd.io/gc.ref.snapshot.<snapshotter>``).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bismuth_agent.containerd.errors import ImageError
from bismuth_agent.containerd.types import Descriptor

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
}


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class PlatformEntry:
    """One manifest of an index, with the platform it is for."""

    descriptor: Descriptor
    os: str
    architecture: str
    variant: str = ""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def media_type(document: Mapping[str, Any], declared: str = "") -> str:
    """The media type of a manifest or index: its own field, else what the source declared."""
    own = document.get("mediaType")
    if isinstance(own, str) and own:
        return own
    if declared:
        return declared
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def parse_manifest(data: bytes) -> Manifest:
    document = load_json(data, "image manifest")
    try:
        config = Descriptor.from_json(document["config"])
        layers = tuple(Descriptor.from_json(layer) for layer in document.get("layers") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"image manifest is malformed: missing {exc}") from None
    return Manifest(config, layers)


def parse_index(data: bytes) -> list[PlatformEntry]:
    document = load_json(data, "image index")
    entries = []
    for entry in document.get("manifests") or ():
        try:
            descriptor = Descriptor.from_json(entry)
        except (KeyError, TypeError, ValueError):
            raise ImageError("image index has a malformed manifest entry") from None
        plat = entry.get("platform") or {}
        entries.append(
            PlatformEntry(
                descriptor,
                str(plat.get("os", "")),
                str(plat.get("architecture", "")),
                str(plat.get("variant", "")),
            )
        )
    return entries


def select_platform(
    entries: Sequence[PlatformEntry], architecture: str | None = None, os: str = "linux"
) -> Descriptor:
    """The manifest for ``os``/``architecture`` (default: this host's architecture)."""
    wanted = architecture or host_architecture()
    for entry in entries:
        if entry.os == os and entry.architecture == wanted:
            return entry.descriptor
    offered = ", ".join(f"{e.os}/{e.architecture}" for e in entries) or "nothing"
    raise ImageError(f"image has no manifest for {os}/{wanted} (it offers {offered})")


def diff_ids(config: bytes) -> list[str]:
    document = load_json(config, "image config")
    ids = (document.get("rootfs") or {}).get("diff_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ImageError("image config has no rootfs.diff_ids")
    return ids


def chain_ids(layer_diff_ids: Sequence[str]) -> list[str]:
    """OCI chain ids: the identity of each layer stack, used as committed snapshot names."""
    chain: list[str] = []
    for diff_id in layer_diff_ids:
        chain.append(diff_id if not chain else sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


def manifest_labels(manifest: Manifest) -> dict[str, str]:
    """GC labels that make a stored manifest hold its config and layers."""
    labels = {"containerd.io/gc.ref.content.config": manifest.config.digest}
    for index, layer in enumerate(manifest.layers):
        labels[f"containerd.io/gc.ref.content.l.{index}"] = layer.digest
    return labels


def snapshot_label(snapshotter: str, name: str = "") -> str:
    """The GC label on a config blob that holds a snapshot (``name`` tells several apart)."""
    base = f"containerd.io/gc.ref.snapshot.{snapshotter}"
    return f"{base}/{name}" if name else base
