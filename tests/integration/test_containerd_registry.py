"""Pulling images from a plain-HTTP registry (Debian's docker-registry on loopback)."""

from __future__ import annotations

import re
import subprocess

import pytest

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ImageError
from bismuth_agent.containerd.manifests import DOCKER_MANIFEST, chain_ids
from bismuth_agent.containerd.oci import import_oci_archive
from bismuth_agent.containerd.registry import pull
from tests.support.containerd import (  # noqa: F401 (fixtures)
    BusyboxImage,
    ContainerdServer,
    Registry,
    busybox_image,
    containerd_server,
    ctrd,
    image_blobs,
    registry,
)

pytestmark = pytest.mark.integration


async def test_pull_of_an_image_that_ctr_pushed(
    ctrd: ContainerdClient,  # noqa: F811
    containerd_server: ContainerdServer,  # noqa: F811
    registry: Registry,  # noqa: F811
    busybox_image: BusyboxImage,  # noqa: F811
) -> None:
    reference = f"{registry.host}/bismuth/busybox:1"
    await import_oci_archive(ctrd, busybox_image.path, reference)
    subprocess.run(
        ["ctr", "--address", containerd_server.address, "--namespace", ctrd.namespace,
         "images", "push", "--plain-http", reference],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    await ctrd.images.delete(reference, sync=True)
    assert await ctrd.content.list() == []

    image = await pull(ctrd, reference, plain_http=True)

    assert image.name == reference
    assert image.target.digest == busybox_image.manifest_digest
    top = chain_ids(busybox_image.diff_ids)[-1]
    assert (await ctrd.snapshots.stat(top)).kind == "COMMITTED"
    # A second pull fetches nothing new and lands on the same record.
    again = await pull(ctrd, reference, plain_http=True)
    assert again.target == image.target


async def test_pull_resolves_a_docker_manifest_list_to_this_host(
    ctrd: ContainerdClient,  # noqa: F811
    registry: Registry,  # noqa: F811
) -> None:
    blobs = image_blobs(media="docker", platforms=("arm64", "amd64"))
    registry.push("bismuth/multi", "2", blobs)

    image = await pull(ctrd, f"{registry.host}/bismuth/multi:2", plain_http=True)

    assert image.target.media_type == DOCKER_MANIFEST
    assert image.target.digest == blobs.manifest_digest  # the amd64 one
    assert await ctrd.snapshots.exists(chain_ids(blobs.diff_ids)[-1])


async def test_pull_of_an_unknown_image_fails_clearly(
    ctrd: ContainerdClient,  # noqa: F811
    registry: Registry,  # noqa: F811
) -> None:
    reference = f"{registry.host}/bismuth/absent:1"
    with pytest.raises(ImageError, match=re.escape(f"{reference}: not found")):
        await pull(ctrd, reference, plain_http=True)
    assert await ctrd.images.list() == []
