"""Snapshots of an image remapped for a user namespace (files owned by the mapped ids).

A container whose uid 0 maps to host uid ``uid_offset`` sees image files owned by host root
as unmapped (65534) unless the files are chowned by the offset. It is done once per image
and mapping: a snapshot is prepared on the image's top layer, mounted, every entry
``lchown``ed by the offset (set-id bits restored, since chown clears them), and committed
under a key naming the image and the mapping. Containers then ``prepare`` their rootfs on
that key. The image config holds the remapped snapshot for the garbage collector, so it
lives as long as the image.

The overlay is mounted with ``metacopy=on`` for the chown: only each file's metadata is
copied up, its data stays in the image's layers (a remap of the base image writes ~26 MB
in ~1.5 s instead of a ~160 MB copy in ~3 s). A snapshot stacked on such a layer must be
mounted with ``metacopy=on`` as well (:func:`with_metacopy`), or those files read empty.
The layers below come from the image itself, so a crafted metacopy or redirect attribute
in an image can only point at files of the same image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import AlreadyExists, ContainerdError
from bismuth_agent.containerd.manifests import snapshot_label
from bismuth_agent.containerd.snapshots import SnapshotService
from bismuth_agent.containerd.types import DEFAULT_SNAPSHOTTER, Mount
from bismuth_agent.containerd.unpack import image_layers, unpack

log = logging.getLogger(__name__)

METACOPY = "metacopy=on"


def remap_key(image: str, top: str, uid_offset: int, gid_offset: int, size: int) -> str:
    """The committed snapshot's key: image name, its layer stack, and the mapping."""
    return f"bismuth-remap/{image}@{top}/{uid_offset}:{gid_offset}:{size}"


def chown_tree(root: Path, uid_offset: int, gid_offset: int) -> int:
    """Shift the owner of every entry under ``root`` (not following links); entries changed."""
    count = 0
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            _shift(Path(directory, name), uid_offset, gid_offset)
            count += 1
    _shift(root, uid_offset, gid_offset)
    return count + 1


def _shift(path: Path, uid_offset: int, gid_offset: int) -> None:
    info = path.lstat()
    os.lchown(path, info.st_uid + uid_offset, info.st_gid + gid_offset)
    if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(info.st_mode))


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise ContainerdError("INTERNAL", f"{' '.join(command)}: {stderr.decode().strip()}")


def with_metacopy(mounts: Sequence[Mount]) -> list[Mount]:
    """``mounts`` with overlay mounts told to follow metacopy files (see the module)."""
    return [
        Mount(m.type, m.source, (*m.options, METACOPY), m.target)
        if m.type == "overlay" and METACOPY not in m.options
        else m
        for m in mounts
    ]


async def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Mount a snapshot's mounts (overlay or bind) on ``target`` with mount(8)."""
    for mount in mounts:
        if mount.type == "bind" or "bind" in mount.options or "rbind" in mount.options:
            flag = "--rbind" if "rbind" in mount.options else "--bind"
            await _run("mount", flag, mount.source, str(target))
            if "ro" in mount.options:
                await _run("mount", "-o", "remount,bind,ro", str(target))
        else:
            await _run(
                "mount", "-t", mount.type, "-o", ",".join(mount.options), mount.source, str(target)
            )


async def unmount(target: Path) -> None:
    await _run("umount", "--recursive", str(target))


async def sweep_mounts(mount_dir: Path) -> int:
    """Unmount and remove what a process killed in a remap left in ``mount_dir`` (only one
    process remaps there: the agent, before it makes any); the count of mounts found."""
    if not mount_dir.is_dir():
        return 0
    points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{mount_dir}/")
    ]
    for point in reversed(points):  # nested last-mounted first
        await _run("umount", point)
    for entry in mount_dir.iterdir():
        with contextlib.suppress(OSError):
            entry.rmdir()
    return len(points)


async def remapped_snapshot(
    client: ContainerdClient,
    image: str,
    uid_offset: int,
    gid_offset: int,
    size: int = 65536,
    executor: Executor | None = None,
    snapshotter: str = DEFAULT_SNAPSHOTTER,
    mount_dir: Path | None = None,
) -> str:
    """The key of the image's top layer remapped by these offsets, made if it is missing
    (the entries chowned on ``executor``'s threads, or the loop's default ones, through a
    mount in a new directory under ``mount_dir``, default the system's temporary one)."""
    layers = await image_layers(client, image)
    snapshots = SnapshotService(client.conn, snapshotter)
    if not await snapshots.exists(layers.top):
        await unpack(client, image, snapshotter)
    key = remap_key(image, layers.top, uid_offset, gid_offset, size)
    if await snapshots.exists(key):
        return key
    async with client.lease() as leased:
        leased_snapshots = SnapshotService(leased.conn, snapshotter)
        work = f"{key}/work-{uuid.uuid4().hex}"
        mounts = await leased_snapshots.prepare(work, layers.top)
        try:
            count = await _chown_mounted(mounts, uid_offset, gid_offset, executor, mount_dir)
            with contextlib.suppress(AlreadyExists):  # made concurrently: same content
                await leased_snapshots.commit(key, work)
                log.info("snapshot remapped", extra={"snapshot": key, "entries": count})
        finally:
            await leased_snapshots.discard(work)
        label = snapshot_label(snapshotter, f"remap-{uid_offset}-{gid_offset}-{size}")
        await leased.content.set_labels(layers.manifest.config.digest, {label: key})
    return key


async def _chown_mounted(
    mounts: Sequence[Mount],
    uid_offset: int,
    gid_offset: int,
    executor: Executor | None,
    mount_dir: Path | None,
) -> int:
    with tempfile.TemporaryDirectory(prefix="bismuth-remap-", dir=mount_dir) as tmp:
        target = Path(tmp)
        await mount_all(with_metacopy(mounts), target)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, chown_tree, target, uid_offset, gid_offset)
        finally:
            await unmount(target)
