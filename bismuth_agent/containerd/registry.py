"""Pulling an image from a registry (HTTP API v2) into containerd, then unpacking it.

The manifest is fetched with both OCI and Docker schema2 media types accepted; an index (or
Docker manifest list) is resolved to this host's platform. Config and layers stream into
the content store under a lease (containerd verifies each digest and size); blobs already
stored are not fetched again. ``plain_http=True`` talks HTTP, for a fleet's own registry.
Registries that require authentication are not supported yet: they fail with a clear error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.content import READ_CHUNK
from bismuth_agent.containerd.errors import ContainerdError, ImageError
from bismuth_agent.containerd.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    load_json,
    manifest_labels,
    media_type,
    parse_index,
    parse_manifest,
    select_platform,
    sha256_digest,
)
from bismuth_agent.containerd.types import DEFAULT_SNAPSHOTTER, Descriptor, Image
from bismuth_agent.containerd.unpack import unpack

log = logging.getLogger(__name__)

ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST))
DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"\w[\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str = "latest"
    digest: str = ""

    @property
    def name(self) -> str:
        """The image name recorded in containerd."""
        base = f"{self.registry}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest and not self.tag else f"{base}:{self.tag}"

    @property
    def api_host(self) -> str:
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def lookup(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag


def parse_reference(reference: str) -> Reference:
    """Parse ``host[:port]/path[:tag][@sha256:...]`` (Docker Hub names are expanded)."""
    rest, _, digest = reference.partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
        if "/" not in path:
            path = f"library/{path}"
    repository, colon, tag = path.rpartition(":")
    if not colon:
        repository, tag = path, ""
    if (
        not _REPOSITORY.fullmatch(repository)
        or (tag and not _TAG.fullmatch(tag))
        or (digest and not _DIGEST.fullmatch(digest))
    ):
        raise ImageError(f"not an image reference: {reference!r}")
    return Reference(registry, repository, tag or ("" if digest else "latest"), digest)


class RegistryClient:
    """The few calls of the registry API a pull needs, over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, ref: Reference, plain_http: bool) -> None:
        self.session = session
        self.ref = ref
        self.base = f"{'http' if plain_http else 'https'}://{ref.api_host}/v2/{ref.repository}"

    async def _get(self, url: str, accept: str | None = None) -> aiohttp.ClientResponse:
        headers = {"Accept": accept} if accept else {}
        try:
            response = await self.session.get(url, headers=headers)
        except aiohttp.ClientError as exc:
            raise ImageError(f"registry {self.ref.registry} unreachable: {exc}") from None
        if response.status == 401:
            response.release()
            raise ImageError(f"registry {self.ref.registry} requires authentication")
        if response.status == 404:
            response.release()
            raise ImageError(f"{self.ref.name}: not found in the registry ({url})")
        if response.status != 200:
            body = (await response.text())[:200]
            raise ImageError(f"registry answered {response.status} for {url}: {body}")
        return response

    async def manifest(self, reference: str) -> tuple[Descriptor, bytes]:
        """A manifest or index by tag or digest: its descriptor (verified) and bytes."""
        response = await self._get(f"{self.base}/manifests/{reference}", ACCEPT)
        async with response:
            data = await response.read()
            declared = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"manifest {reference} from the registry has digest {digest}")
        kind = media_type(load_json(data, "manifest"), declared)
        return Descriptor(kind, digest, len(data)), data

    async def blob(self, digest: str) -> AsyncIterator[bytes]:
        response = await self._get(f"{self.base}/blobs/{digest}")
        async with response:
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                yield chunk


async def _fetch_blob(client: ContainerdClient, registry: RegistryClient, blob: Descriptor) -> None:
    if await client.content.exists(blob.digest):
        return
    try:
        await client.content.write(
            f"pull-{blob.digest}", registry.blob(blob.digest), expected=blob.digest, total=blob.size
        )
    except ContainerdError as exc:
        if exc.code in ("FAILED_PRECONDITION", "INVALID_ARGUMENT"):
            raise ImageError(
                f"blob {blob.digest} from the registry is corrupt: {exc.details}"
            ) from None
        raise


async def pull(
    client: ContainerdClient,
    reference: str,
    *,
    plain_http: bool = False,
    architecture: str | None = None,
    snapshotter: str = DEFAULT_SNAPSHOTTER,
    session: aiohttp.ClientSession | None = None,
) -> Image:
    """Fetch the image into containerd, record it under its reference, and unpack it."""
    ref = parse_reference(reference)
    own_session = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=60))
    try:
        registry = RegistryClient(http, ref, plain_http)
        target, data = await registry.manifest(ref.lookup)
        if target.media_type in INDEX_TYPES:
            target, data = await registry.manifest(
                select_platform(parse_index(data), architecture).digest
            )
        manifest = parse_manifest(data)
        async with client.lease() as leased:
            for blob in (manifest.config, *manifest.layers):
                await _fetch_blob(leased, registry, blob)
            await leased.content.write(
                f"pull-{target.digest}",
                data,
                expected=target.digest,
                total=target.size,
                labels=manifest_labels(manifest),
            )
            image = await leased.images.put(ref.name, target)
            await unpack(leased, ref.name, snapshotter)
    finally:
        if own_session:
            await http.close()
    log.info("image pulled", extra={"image": ref.name, "digest": target.digest})
    return image
