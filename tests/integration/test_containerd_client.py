"""The containerd adapter against a real, private containerd: images, containers, tasks, events."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ContainerdError, ImageError, NotFound
from bismuth_agent.containerd.events import EventStream, TaskExit
from bismuth_agent.containerd.manifests import chain_ids
from bismuth_agent.containerd.oci import import_oci_archive
from bismuth_agent.containerd.process import exec_process
from bismuth_agent.containerd.remap import mount_all, remapped_snapshot, unmount, with_metacopy
from bismuth_agent.containerd.stdio import ProcessIO
from bismuth_agent.containerd.unpack import unpack
from tests.support.containerd import (  # noqa: F401 (fixtures)
    BusyboxImage,
    ContainerdServer,
    busybox_image,
    container_spec,
    containerd_server,
    ctrd,
    image_blobs,
    write_oci_archive,
)

pytestmark = pytest.mark.integration
WRONG = "sha256:" + "0" * 64  # no blob has this digest


@dataclass
class Running:
    id: str
    pid: int
    spec: dict[str, object]
    io: ProcessIO


async def start_container(
    client: ContainerdClient,
    server: ContainerdServer,
    image: str,
    args: list[str],
    parent: str,
    fifo_dir: Path,
    uid_map: tuple[int, int, int] | None = None,
) -> Running:
    cid = str(uuid.uuid4())
    spec = container_spec(cid, args, server.cgroup_parent, uid_map=uid_map)
    mounts = await client.create_container(cid, spec=spec, parent=parent, image=image)
    assert await client.create_container(cid, spec=spec, parent=parent, image=image) == mounts
    io = await ProcessIO.open(fifo_dir, cid)
    pid = await client.tasks.create(cid, rootfs=with_metacopy(mounts), stdio=io.stdio)
    io.started()
    await client.tasks.start(cid)
    return Running(cid, pid, spec, io)


async def first_exit(events: EventStream, container_id: str) -> TaskExit:
    async for envelope in events:
        if isinstance(envelope.event, TaskExit) and envelope.event.id == container_id:
            return envelope.event
    raise AssertionError("event stream ended")


@pytest.fixture
async def image(ctrd: ContainerdClient, busybox_image: BusyboxImage) -> AsyncIterator[str]:  # noqa: F811
    """The busybox image imported and unpacked; yields the top chain id."""
    imported = await import_oci_archive(ctrd, busybox_image.path)
    yield await unpack(ctrd, imported.name)


@pytest.fixture
def fifo_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bismuth-fifo-") as tmp:
        yield Path(tmp)


async def test_version_is_the_installed_containerd(ctrd: ContainerdClient) -> None:  # noqa: F811
    installed = subprocess.run(["containerd", "--version"], capture_output=True, text=True)
    version = await ctrd.version()
    assert version.version and version.version in installed.stdout


async def test_ensure_namespace_is_idempotent(ctrd: ContainerdClient) -> None:  # noqa: F811
    await ctrd.ensure_namespace()
    await ctrd.ensure_namespace()
    assert ctrd.namespace in await ctrd.list_namespaces()


async def test_import_records_the_manifest_and_unpack_commits_chain_snapshots(
    ctrd: ContainerdClient,  # noqa: F811
    busybox_image: BusyboxImage,  # noqa: F811
) -> None:
    image = await import_oci_archive(ctrd, busybox_image.path)
    assert image.name == "bismuth.test/busybox:1"
    assert image.target.digest == busybox_image.manifest_digest
    assert [i.name for i in await ctrd.images.list()] == [image.name]

    top = await unpack(ctrd, image.name)
    chain = chain_ids(busybox_image.diff_ids)
    assert top == chain[-1]
    base, upper = await ctrd.snapshots.stat(chain[0]), await ctrd.snapshots.stat(chain[1])
    assert (base.kind, base.parent) == ("COMMITTED", "")
    assert (upper.kind, upper.parent) == ("COMMITTED", chain[0])

    # A second import and unpack reuse everything: same record, no new snapshots.
    await import_oci_archive(ctrd, busybox_image.path)
    assert await unpack(ctrd, image.name) == top
    assert sorted(s.name for s in await ctrd.snapshots.list()) == sorted(chain)


async def test_container_runs_execs_reports_metrics_and_exits_on_kill(
    ctrd: ContainerdClient,  # noqa: F811
    containerd_server: ContainerdServer,  # noqa: F811
    image: str,
    fifo_dir: Path,
) -> None:
    events = ctrd.events.subscribe()
    await events.ready()
    box = await start_container(
        ctrd,
        containerd_server,
        "bismuth.test/busybox:1",
        ["/bin/sh", "-c", "cat /etc/hello; exec sleep 300"],
        image,
        fifo_dir,
    )
    assert await box.io.stdout.readline() == b"hello from layer 2\n"
    assert (await ctrd.tasks.get(box.id)).status == "RUNNING"
    record = await ctrd.containers.get(box.id)
    assert (record.spec, record.runtime, record.snapshot_key) == (
        box.spec, "io.containerd.runc.v2", box.id,
    )  # fmt: skip
    assert [c.id for c in await ctrd.containers.list()] == [box.id]
    assert box.pid in await ctrd.tasks.pids(box.id)

    process = dict(box.spec["process"])  # type: ignore[call-overload]
    hi = await exec_process(ctrd, box.id, {**process, "args": ["echo", "hi"]}, fifo_dir)
    assert (hi.exit_code, hi.stdout, hi.stderr) == (0, b"hi\n", b"")
    script = "tr a-z A-Z; echo oops >&2; exit 3"
    upper = await exec_process(
        ctrd, box.id, {**process, "args": ["sh", "-c", script]}, fifo_dir, stdin=b"body\n"
    )
    assert (upper.exit_code, upper.stdout, upper.stderr) == (3, b"BODY\n", b"oops\n")

    [metrics] = await ctrd.tasks.metrics([box.id])
    assert metrics.container_id == box.id
    assert metrics.cpu_usage_ns > 0 and metrics.memory_usage_bytes > 0 and metrics.pids >= 1

    await ctrd.tasks.kill(box.id, signal.SIGKILL)
    async with asyncio.timeout(1):  # the agent's contract: an exit is seen within 1 s
        exited = await first_exit(events, box.id)
    assert exited.exit_status == 128 + signal.SIGKILL
    assert (await ctrd.tasks.wait(box.id)).code == 128 + signal.SIGKILL
    await events.close()

    await ctrd.tasks.delete(box.id)
    await ctrd.delete_container(box.id)
    await ctrd.delete_container(box.id)  # again: nothing left to remove is fine
    await box.io.close()
    assert await ctrd.tasks.list() == []
    assert await ctrd.containers.list() == []
    remaining = await ctrd.snapshots.list()
    assert sorted(s.kind for s in remaining) == ["COMMITTED", "COMMITTED"]  # the image's layers
    assert not list(fifo_dir.iterdir())


async def test_removing_what_is_not_there_raises_not_found(ctrd: ContainerdClient) -> None:  # noqa: F811
    absent = str(uuid.uuid4())
    for removal in (
        ctrd.tasks.delete(absent),
        ctrd.tasks.kill(absent, signal.SIGTERM),
        ctrd.containers.delete(absent),
        ctrd.snapshots.remove(absent),
        ctrd.images.delete("bismuth.test/absent:1"),
        ctrd.content.delete("sha256:" + "0" * 64),
    ):
        with pytest.raises(NotFound):
            await removal
    await ctrd.snapshots.discard(absent)  # the teardown form: absent is success


async def test_import_rejects_a_blob_that_does_not_match_its_digest(
    ctrd: ContainerdClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    blobs = image_blobs()
    layer = next(d for d, data in blobs.blobs.items() if data[:2] == b"\x1f\x8b")
    blobs.blobs[layer] = blobs.blobs[layer][:-1] + bytes([blobs.blobs[layer][-1] ^ 1])
    archive = write_oci_archive(tmp_path / "bad.tar", "bismuth.test/bad:1", blobs)
    with pytest.raises(ImageError, match=layer):
        await import_oci_archive(ctrd, archive.path)
    assert await ctrd.images.list() == []
    assert not await ctrd.content.exists(layer)


async def test_unpack_of_an_unknown_image_says_so(ctrd: ContainerdClient) -> None:  # noqa: F811
    with pytest.raises(ImageError, match=re.escape("bismuth.test/absent:1")):
        await unpack(ctrd, "bismuth.test/absent:1")


async def test_remapped_snapshot_shifts_owners_once_per_mapping(
    ctrd: ContainerdClient,  # noqa: F811
    containerd_server: ContainerdServer,  # noqa: F811
    image: str,
    fifo_dir: Path,
) -> None:
    key = await remapped_snapshot(ctrd, "bismuth.test/busybox:1", 100000, 100000)
    assert (await ctrd.snapshots.stat(key)).parent == image
    assert await remapped_snapshot(ctrd, "bismuth.test/busybox:1", 100000, 100000) == key
    assert len([s for s in await ctrd.snapshots.list() if s.name.startswith("bismuth-remap/")]) == 1

    view = f"view-{uuid.uuid4()}"
    async with ctrd.lease() as leased:
        mounts = await leased.snapshots.view(view, key)
        with tempfile.TemporaryDirectory() as tmp:
            await mount_all(with_metacopy(mounts), Path(tmp))
            try:
                busybox = os.lstat(Path(tmp, "bin/busybox"))
                marker = os.lstat(Path(tmp, "etc/setuid-marker"))
                root = os.lstat(tmp)
            finally:
                await unmount(Path(tmp))
        await leased.snapshots.remove(view)
    assert (busybox.st_uid, busybox.st_gid) == (100000, 100000)
    assert (root.st_uid, marker.st_uid) == (100000, 100000)
    assert marker.st_mode & 0o7777 == 0o4755  # chown cleared set-uid; it was restored

    # Inside a user namespace mapping 0 -> 100000 the files belong to root again.
    box = await start_container(
        ctrd,
        containerd_server,
        "bismuth.test/busybox:1",
        ["sh", "-c", "stat -c '%u %g' /bin/busybox /etc/hello; id -u"],
        key,
        fifo_dir,
        uid_map=(0, 100000, 65536),
    )
    assert (await ctrd.tasks.wait(box.id)).code == 0
    assert await box.io.stdout.read() == b"0 0\n0 0\n0\n"
    await box.io.close()


async def test_deleting_the_image_collects_its_snapshots(
    ctrd: ContainerdClient,  # noqa: F811
    image: str,
) -> None:
    await remapped_snapshot(ctrd, "bismuth.test/busybox:1", 200000, 200000)
    assert len(await ctrd.snapshots.list()) == 3
    await ctrd.images.delete("bismuth.test/busybox:1", sync=True)
    assert await ctrd.snapshots.list() == []
    assert await ctrd.content.list() == []


async def test_chain_ids_name_the_snapshots_ctr_unpacks_too(
    ctrd: ContainerdClient,  # noqa: F811
    containerd_server: ContainerdServer,  # noqa: F811
    busybox_image: BusyboxImage,  # noqa: F811
) -> None:
    subprocess.run(
        ["ctr", "--address", containerd_server.address, "--namespace", ctrd.namespace,
         "images", "import", str(busybox_image.path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    names = sorted(s.name for s in await ctrd.snapshots.list())
    assert names == sorted(chain_ids(busybox_image.diff_ids))
    # ...and our unpack of the image ctr imported finds nothing left to do.
    assert await unpack(ctrd, busybox_image.name) == chain_ids(busybox_image.diff_ids)[-1]
    assert sorted(s.name for s in await ctrd.snapshots.list()) == names


async def test_content_write_is_verified_resumable_and_readable(ctrd: ContainerdClient) -> None:  # noqa: F811
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with ctrd.lease() as leased:
        async with leased.content.writer("blob-1", digest, len(data)) as writer:
            assert (await writer.open()).offset == 0
            await writer.write(data[:1000])
        # The ingest survives its stream: status shows it, and a new writer resumes it.
        assert (await leased.content.status("blob-1")).offset == 1000
        async with leased.content.writer("blob-1", digest, len(data)) as writer:
            assert (await writer.open()).offset == 1000
            await writer.write(data[1000:])
            assert await writer.commit({"bismuth.test/kind": "random"}) == digest
        info = await leased.content.info(digest)
        assert (info.size, info.labels["bismuth.test/kind"]) == (len(data), "random")
        assert await leased.content.read_all(digest) == data
        chunks = [c async for c in leased.content.read(digest, offset=10, size=20)]
        assert b"".join(chunks) == data[10:30]
        with pytest.raises(NotFound):
            await leased.content.status("blob-1")  # committed: no longer an ingest

        # A blob whose bytes do not match the expected digest is refused at commit.
        with pytest.raises(ContainerdError, match="FAILED_PRECONDITION"):
            await leased.content.write("blob-2", b"other bytes", expected=WRONG, total=11)
        # Writing what is there already is a no-op that reports so.
        assert await leased.content.write("blob-3", data, expected=digest, total=len(data)) is False


async def test_snapshot_mounts_are_those_of_prepare(ctrd: ContainerdClient, image: str) -> None:  # noqa: F811
    key = f"rootfs-{uuid.uuid4()}"
    async with ctrd.lease() as leased:  # unreferenced, it would be garbage otherwise
        prepared = await leased.snapshots.prepare(key, image, labels={"bismuth.test/x": "1"})
        assert await leased.snapshots.mounts(key) == prepared
        info = await leased.snapshots.stat(key)
        assert (info.kind, info.parent, info.labels["bismuth.test/x"]) == ("ACTIVE", image, "1")
        await leased.snapshots.remove(key)
        assert not await leased.snapshots.exists(key)


async def test_a_containers_snapshot_outlives_garbage_collection(
    ctrd: ContainerdClient,  # noqa: F811
    containerd_server: ContainerdServer,  # noqa: F811
    image: str,
) -> None:
    """Made without a lease, the rootfs snapshot is referenced by its container record:
    a collection right after leaves it, and deleting the container collects it."""
    cid = str(uuid.uuid4())
    spec = container_spec(cid, ["/bin/true"], containerd_server.cgroup_parent)
    mounts = await ctrd.create_container(cid, spec=spec, parent=image)
    await ctrd.delete_lease(await ctrd.create_lease(f"collect-{cid}"), sync=True)  # a GC pass
    assert await ctrd.snapshots.mounts(cid) == mounts
    await ctrd.delete_container(cid)
    await ctrd.delete_lease(await ctrd.create_lease(f"collect-{cid}"), sync=True)
    assert not await ctrd.snapshots.exists(cid)


async def test_a_rootfs_made_before_its_record_outlives_collection_under_its_lease(
    ctrd: ContainerdClient,  # noqa: F811
    containerd_server: ContainerdServer,  # noqa: F811
    image: str,
) -> None:
    """The agent makes a rootfs before the container's record, under a lease: collections
    before the record and after the lease is gone both leave it."""
    cid = str(uuid.uuid4())
    lease = await ctrd.create_lease(f"rootfs-{cid}")
    mounts = await ctrd.derive(lease=lease).prepare_rootfs(cid, image)
    await ctrd.delete_lease(await ctrd.create_lease(f"collect-{cid}"), sync=True)
    await ctrd.create_record(
        cid, spec=container_spec(cid, ["/bin/true"], containerd_server.cgroup_parent)
    )
    await ctrd.delete_lease(lease, sync=True)
    assert await ctrd.snapshots.mounts(cid) == mounts
    assert lease not in await ctrd.list_leases()
    await ctrd.delete_container(cid)
    assert not await ctrd.snapshots.exists(cid)
