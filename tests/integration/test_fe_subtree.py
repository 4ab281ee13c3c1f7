"""The frontend's subtree mirror on a real ZooKeeper, as the frontend's reader identity:
the first walk, each later change read from the one znode it names, and a catch-up after
the connection or the session was lost while things changed."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bismuth_core import layout
from bismuth_core.credentials import reader_access
from bismuth_core.subtree import SubtreeMirror
from bismuth_core.zk import ZooKeeper
from tests.support.clusterkey import CREDENTIALS
from tests.support.waiting import eventually
from tests.support.zkfaults import expire_session

CID = uuid.UUID("12345678-1234-5678-1234-567812345678")
STATUS = layout.status_path("10.0.0.1", CID)


class Followed:
    """A mirror of ``/node`` and what it reported."""

    def __init__(self, zk: ZooKeeper) -> None:
        self.changed: list[str] = []
        self.loads = 0
        self.mirror = SubtreeMirror(
            zk,
            layout.NODES,
            wants_data=layout.routing_reads_data,
            on_change=self.changed.append,
            on_loaded=self._loaded,
        )

    def _loaded(self) -> None:
        self.loads += 1

    def has(self, path: str, data: bytes | None) -> bool:
        parent, _, name = path.rpartition("/")
        return name in self.mirror.children(parent) and self.mirror.data(path) == data

    def lacks(self, path: str) -> bool:
        parent, _, name = path.rpartition("/")
        return name not in self.mirror.children(parent) and self.mirror.data(path) is None


@pytest.fixture
async def reader(watched_session):
    session = await watched_session(reader_access(CREDENTIALS.frontend))
    return session.client, session.watches, session.proxy


async def test_first_walk_then_each_change_from_its_own_znode(zk, reader):
    client, watches, _proxy = reader
    await zk.create(layout.node_path("10.0.0.1"), b"\x01")
    await zk.ensure_path(layout.container_path("10.0.0.1", CID))
    await zk.set(layout.container_path("10.0.0.1", CID), CID.bytes)
    await zk.create(STATUS, b"\x01")
    followed = Followed(client)
    await followed.mirror.start(watches)
    await eventually(lambda: followed.loads == 1, what="first walk")
    assert followed.has(STATUS, b"\x01")
    assert followed.has(layout.node_path("10.0.0.1"), b"\x01")
    # a container record's data is not read, only its existence
    assert followed.has(layout.container_path("10.0.0.1", CID), None)

    await zk.set(STATUS, b"\x02")
    await eventually(lambda: followed.has(STATUS, b"\x02"), what="status changed")
    alive = layout.alive_path("10.0.0.2")
    await zk.ensure_path(layout.node_path("10.0.0.2"))
    await zk.create(alive, b"{}", ephemeral=True)
    await eventually(lambda: followed.has(alive, b"{}"), what="deep znode created")
    await zk.delete(alive)
    await eventually(lambda: followed.lacks(alive), what="deep znode deleted")
    assert alive in followed.changed and STATUS in followed.changed
    assert followed.loads == 1


async def test_changes_made_while_the_connection_was_down_are_caught_up(zk, reader):
    client, watches, proxy = reader
    kept, changed, gone = "10.0.0.1", "10.0.0.2", "10.0.0.3"
    for ip in (kept, changed, gone):
        await zk.create(layout.node_path(ip), b"\x01")
    await zk.ensure_path(layout.containers_path(gone))
    await zk.ensure_path(layout.container_path(gone, CID))
    await zk.create(layout.status_path(gone, CID), b"\x02")
    followed = Followed(client)
    await followed.mirror.start(watches)
    await eventually(lambda: followed.loads == 1, what="first walk")
    assert followed.has(layout.status_path(gone, CID), b"\x02")

    proxy.cut()
    await eventually(lambda: not client.connected, what="connection lost")
    await zk.set(layout.node_path(changed), b"\x00")
    for path in (layout.status_path(gone, CID), layout.container_path(gone, CID)):
        await zk.delete(path)
    await zk.delete(layout.containers_path(gone))
    await zk.delete(layout.node_path(gone))
    await zk.ensure_path(layout.container_path(kept, CID))
    await zk.create(layout.status_path(kept, CID), b"\x01")
    assert followed.has(layout.node_path(changed), b"\x01")  # kept while away
    proxy.restore()

    await eventually(lambda: followed.loads == 2, timeout=20, what="walk after reconnect")
    assert followed.has(layout.node_path(changed), b"\x00")
    assert followed.has(layout.status_path(kept, CID), b"\x01")
    assert followed.lacks(layout.status_path(gone, CID))
    assert followed.lacks(layout.node_path(gone))
    assert followed.has(layout.node_path(kept), b"\x01")
    await zk.set(layout.status_path(kept, CID), b"\x02")  # and it follows on from there
    await eventually(lambda: followed.has(layout.status_path(kept, CID), b"\x02"), what="next")


async def test_a_new_session_walks_again(zk_server, zk, reader):
    client, watches, _proxy = reader
    await zk.create(layout.node_path("10.0.0.1"), b"\x01")
    followed = Followed(client)
    await followed.mirror.start(watches)
    await eventually(lambda: followed.loads == 1, what="first walk")
    await zk.set(layout.node_path("10.0.0.1"), b"\x00")
    await eventually(lambda: followed.has(layout.node_path("10.0.0.1"), b"\x00"), what="seen")
    await zk.create(layout.node_path("10.0.0.4"), b"\x01")
    await zk.delete(layout.node_path("10.0.0.4"))
    await eventually(lambda: followed.lacks(layout.node_path("10.0.0.4")), what="gone")

    await asyncio.to_thread(expire_session, client.client, zk_server.hosts)
    await eventually(lambda: followed.loads == 2, timeout=20, what="walk in the new session")
    await zk.create(layout.node_path("10.0.0.5"), b"\x01")
    await eventually(lambda: followed.has(layout.node_path("10.0.0.5"), b"\x01"), what="new")


async def test_a_mirror_stops_at_its_depth_and_keeps_creation_times(zk, reader):
    """As the agent mirrors its node: container znodes with data and ctime, and nothing of
    the status znodes below them, neither at the walk nor from later events."""
    client, watches, _proxy = reader
    root = layout.containers_path("10.0.0.3")
    first = layout.container_path("10.0.0.3", CID)
    await zk.ensure_path(root)
    await zk.create(first, b"one")
    await zk.create(layout.status_path("10.0.0.3", CID), b"\x01")
    changed: list[str] = []
    loaded = asyncio.Event()
    mirror = SubtreeMirror(
        client,
        root,
        wants_data=lambda path: path != root,
        on_change=changed.append,
        on_loaded=loaded.set,
        depth=1,
    )
    await mirror.start(watches)
    await asyncio.wait_for(loaded.wait(), 10)
    created = (await zk.get(first))[1].ctime / 1000
    assert mirror.data(first) == b"one" and mirror.ctime(first) == created
    assert list(mirror.children(first)) == []  # its status is not mirrored

    other = uuid.uuid4()
    second = layout.container_path("10.0.0.3", other)
    await zk.create(second, b"two")
    await zk.create(layout.status_path("10.0.0.3", other), b"\x01")
    await zk.set(layout.status_path("10.0.0.3", CID), b"\x02")
    await eventually(lambda: mirror.data(second) == b"two", what="the new container znode")
    await zk.delete(layout.status_path("10.0.0.3", CID))
    await zk.delete(first)
    await eventually(lambda: mirror.data(first) is None, what="the deleted one gone")
    assert sorted(mirror.children(root)) == [str(other)]
    assert mirror.ctime(first) is None and mirror.ctime(second) is not None
    assert not any(path.endswith("/status") for path in changed)
    mirror.close()
