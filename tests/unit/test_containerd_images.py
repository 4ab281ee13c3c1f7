"""Image references, manifests, platforms, chain ids and GC labels (no containerd needed)."""

from __future__ import annotations

import hashlib
import json

import pytest

from bismuth_agent.containerd.errors import ImageError
from bismuth_agent.containerd.manifests import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    chain_ids,
    diff_ids,
    manifest_labels,
    media_type,
    parse_index,
    parse_manifest,
    select_platform,
    snapshot_label,
)
from bismuth_agent.containerd.oci import choose_entry
from bismuth_agent.containerd.registry import Reference, parse_reference


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/bismuth/busybox:1", Reference("127.0.0.1:5000", "bismuth/busybox", "1")),
        ("registry.fleet/app", Reference("registry.fleet", "app", "latest")),
        ("localhost/x/y:dev", Reference("localhost", "x/y", "dev")),
        ("busybox", Reference("docker.io", "library/busybox", "latest")),
        ("someone/tool:2", Reference("docker.io", "someone/tool", "2")),
        (
            "reg.example:443/app@sha256:" + "a" * 64,
            Reference("reg.example:443", "app", "", "sha256:" + "a" * 64),
        ),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_reference_names_and_endpoints() -> None:
    assert parse_reference("busybox").name == "docker.io/library/busybox:latest"
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    pinned = parse_reference("h:1/app@sha256:" + "b" * 64)
    assert pinned.name == "h:1/app@sha256:" + "b" * 64
    assert pinned.lookup == "sha256:" + "b" * 64


@pytest.mark.parametrize(
    "text", ["", "h:1/app@md5:abc", "h:1/App:1", "h:1/app:bad tag", "h:1/app@sha256:12"]
)
def test_parse_reference_rejects_garbage(text: str) -> None:
    with pytest.raises(ImageError):
        parse_reference(text)


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = _sha("a"), _sha("b"), _sha("c")
    second = _sha(f"{a} {b}")
    assert chain_ids([a, b, c]) == [a, second, _sha(f"{second} {c}")]
    assert chain_ids([]) == []


def test_manifest_parsing_and_gc_labels() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "c", "digest": _sha("config"), "size": 6},
        "layers": [
            {"mediaType": "l", "digest": _sha("l0"), "size": 2},
            {"mediaType": "l", "digest": _sha("l1"), "size": 2},
        ],
    }
    manifest = parse_manifest(json.dumps(document).encode())
    assert [layer.digest for layer in manifest.layers] == [_sha("l0"), _sha("l1")]
    assert manifest_labels(manifest) == {
        "containerd.io/gc.ref.content.config": _sha("config"),
        "containerd.io/gc.ref.content.l.0": _sha("l0"),
        "containerd.io/gc.ref.content.l.1": _sha("l1"),
    }
    assert media_type(document) == DOCKER_MANIFEST
    assert media_type({"manifests": []}) == OCI_INDEX
    assert media_type({"layers": []}, declared="") == OCI_MANIFEST


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"layers": []}'])
def test_malformed_manifests_are_image_errors(data: bytes) -> None:
    with pytest.raises(ImageError):
        parse_manifest(data)


def test_platform_selection() -> None:
    index = {
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": _sha("arm"), "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": OCI_MANIFEST, "digest": _sha("amd"), "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }  # fmt: skip
    entries = parse_index(json.dumps(index).encode())
    assert select_platform(entries, "amd64").digest == _sha("amd")
    assert select_platform(entries, "arm64").digest == _sha("arm")
    with pytest.raises(ImageError, match="offers linux/arm64, linux/amd64"):
        select_platform(entries, "riscv64")


def test_diff_ids_come_from_the_config() -> None:
    config = {"rootfs": {"type": "layers", "diff_ids": [_sha("x")]}}
    assert diff_ids(json.dumps(config).encode()) == [_sha("x")]
    with pytest.raises(ImageError):
        diff_ids(b'{"rootfs": {}}')


def test_snapshot_labels() -> None:
    assert snapshot_label("overlayfs") == "containerd.io/gc.ref.snapshot.overlayfs"
    assert snapshot_label("overlayfs", "remap-1-1-65536") == (
        "containerd.io/gc.ref.snapshot.overlayfs/remap-1-1-65536"
    )


def test_choose_entry_of_an_archive_index() -> None:
    one = {
        "mediaType": OCI_MANIFEST,
        "digest": _sha("1"),
        "size": 1,
        "annotations": {"io.containerd.image.name": "reg/one:1"},
    }
    two = {"mediaType": OCI_MANIFEST, "digest": _sha("2"), "size": 1,
           "annotations": {"org.opencontainers.image.ref.name": "2"}}  # fmt: skip
    assert choose_entry({"manifests": [one]}, None)[1] == "reg/one:1"
    assert choose_entry({"manifests": [one]}, "other:3") == (
        choose_entry({"manifests": [one]}, None)[0],
        "other:3",
    )
    assert choose_entry({"manifests": [one, two]}, "reg/two:2")[0].digest == _sha("2")
    with pytest.raises(ImageError, match="cannot tell"):
        choose_entry({"manifests": [one, two]}, None)
    with pytest.raises(ImageError, match="pass a name"):
        choose_entry({"manifests": [{**one, "annotations": {}}]}, None)
