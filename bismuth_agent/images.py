"""Images as containers get them: pulled if missing, remapped per host id range, and spare
ranges remapped ahead of need.

A container's rootfs sits on its image's top layer remapped for the container's host id
range (:mod:`bismuth_agent.containerd.remap`); the remap is kept for as long as the image,
and a released range goes to the next container with its snapshot. What costs is the first
use of a range: a copy of every entry's metadata, about 1.5 s for the base image on an idle
host and several seconds on a busy one, in the middle of a cold start. That happens when a
node runs more containers of an image than it ever did, and on every update, whose new
containers run next to the old ones. So after each start of an image, the next
``id_map_spare`` free ranges (those the next containers will get: the lowest free first)
are remapped for it in the background, one at a time, by a thread at the lowest CPU
priority: a new container finds its snapshot made. The spare snapshots are the same ones
a range's first container would make (they go with the image); no container holds one
until its range is allocated to it, and one range is never two containers' at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bismuth_core.errors import BismuthError

from .containerd.client import ContainerdClient
from .containerd.errors import ContainerdError, NotFound
from .containerd.registry import pull
from .containerd.remap import remapped_snapshot, sweep_mounts
from .idranges import IdRangeStore
from .model import SetupFailed
from .spec import IdMapping

log = logging.getLogger(__name__)

STOP_WAIT = 10.0  # seconds close() lets a remap in progress finish (it cannot be cut short)


def _lowest_priority() -> None:
    """Run this thread (only this one: niceness is per thread on Linux) last."""
    os.setpriority(os.PRIO_PROCESS, 0, 19)


class ImageSnapshots:
    """The remapped snapshots containers start on, and the spare ones made ahead."""

    def __init__(
        self,
        ctrd: ContainerdClient,
        ranges: IdRangeStore,
        plain_http_registries: tuple[str, ...] = (),
        spare: int = 0,
        mount_dir: Path | None = None,
    ) -> None:
        self.ctrd = ctrd
        self.mount_dir = mount_dir  # where remaps mount layers; swept by start()
        self.ranges = ranges
        self.plain_http_registries = plain_http_registries
        self.spare = spare
        self._pulls: dict[str, asyncio.Lock] = {}
        self._remaps: dict[tuple[str, int], asyncio.Lock] = {}
        self._known: dict[tuple[str, str, int], str] = {}  # (image, digest, range) -> key
        self._wanted: dict[str, None] = {}  # images to make spare ranges for, in order
        self._ahead: asyncio.Task[None] | None = None
        self._background: ThreadPoolExecutor | None = None
        self._stopping = False

    async def snapshot(
        self, reference: str, ids: IdMapping, digest: str, *, recheck: bool = False
    ) -> str:
        """The top snapshot of ``reference`` (its content ``digest``) remapped to ``ids``.
        One made or found before for the same content and range is taken as it is, with no
        call to containerd: a caller that finds it gone (its image was removed meanwhile)
        asks again with ``recheck``, which looks it up (or makes it) anew."""
        seen = (reference, digest, ids.host_start)
        known = self._known.get(seen)
        if known is not None and not recheck:
            return known
        key = await self._remapped(reference, ids)
        self._known[seen] = key
        return key

    async def digest(self, reference: str) -> str:
        """The image's digest, pulling it first if it is missing; ``SetupFailed`` if it
        cannot be had."""
        async with self._pulls.setdefault(reference, asyncio.Lock()):
            try:
                return (await self.ctrd.images.get(reference)).target.digest
            except NotFound:
                pass
            host = reference.split("/", 1)[0]
            try:
                await pull(self.ctrd, reference, plain_http=host in self.plain_http_registries)
            except (ContainerdError, BismuthError, OSError) as exc:
                why = exc.message if isinstance(exc, BismuthError) else repr(exc)
                raise SetupFailed(f"image {reference} is not available: {why}") from exc
            return (await self.ctrd.images.get(reference)).target.digest

    async def _remapped(
        self, reference: str, ids: IdMapping, executor: ThreadPoolExecutor | None = None
    ) -> str:
        async with self._remaps.setdefault((reference, ids.host_start), asyncio.Lock()):
            return await remapped_snapshot(
                self.ctrd,
                reference,
                ids.host_start,
                ids.host_start,
                ids.size,
                executor,
                mount_dir=self.mount_dir,
            )

    async def start(self) -> None:
        """Clear what an agent killed during a remap left mounted (before any remap)."""
        if self.mount_dir is None:
            return
        self.mount_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if found := await sweep_mounts(self.mount_dir):
            log.warning("unmounted %d layer(s) a killed remap left", found)

    def prepare_ahead(self, reference: str) -> None:
        """Remap the next ``spare`` free ranges for ``reference`` in the background."""
        if self.spare <= 0 or self._stopping:
            return
        self._wanted[reference] = None
        if self._ahead is None or self._ahead.done():
            self._ahead = asyncio.create_task(self._prepare(), name="spare-id-ranges")

    async def _prepare(self) -> None:
        if self._background is None:
            self._background = ThreadPoolExecutor(1, "spare-remap", _lowest_priority)
        while self._wanted and not self._stopping:
            reference = next(iter(self._wanted))
            del self._wanted[reference]
            for ids in self.ranges.free(self.spare):
                if self._stopping:
                    return
                try:
                    await self._remapped(reference, ids, self._background)
                except (ContainerdError, BismuthError, OSError) as exc:
                    why = exc.message if isinstance(exc, BismuthError) else repr(exc)
                    log.warning(
                        "cannot remap %s ahead for ids %d+: %s", reference, ids.host_start, why
                    )
                    break

    async def close(self) -> None:
        """Stop making spare snapshots: one being made is finished (or, after STOP_WAIT,
        abandoned to the next start, which makes it again)."""
        self._stopping = True
        if self._ahead is not None and not self._ahead.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._ahead), STOP_WAIT)
            self._ahead.cancel()
        if self._background is not None:
            self._background.shutdown(wait=False)
