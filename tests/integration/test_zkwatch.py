"""Persistent recursive watches on a real ZooKeeper: every change below the watched path
arrives, not just the first, and the watch is back after the connection or the session was
lost (with what changed meanwhile left to the owner's walk)."""

from __future__ import annotations

import asyncio
import queue

import pytest

from bismuth_core.zkwatch import ChangeKind, PersistentWatches, WatchEvent, WatchMode
from tests.support.clusterkey import ACCESS
from tests.support.waiting import eventually
from tests.support.zkfaults import expire_session


class Seen:
    """What a watch delivered, in order, and how often it was re-armed."""

    def __init__(self) -> None:
        self.events: queue.Queue[WatchEvent] = queue.Queue()
        self.rearmed = 0

    def rearm(self) -> None:
        self.rearmed += 1

    async def next(self, timeout: float = 5.0) -> tuple[ChangeKind, str]:
        event = await asyncio.to_thread(self.events.get, True, timeout)
        return event.kind, event.path

    def nothing_more(self) -> bool:
        return self.events.empty()


@pytest.fixture
async def watcher(watched_session):
    session = await watched_session(ACCESS)
    return session.client, session.watches, session.proxy


async def test_create_change_and_delete_of_deep_descendants_arrive(zk, watcher):
    client, watches, _proxy = watcher
    await zk.ensure_path("/route")
    seen = Seen()
    assert await asyncio.to_thread(watches.add("/route", seen.events.put).get, True, 5)
    await zk.ensure_path("/route/a/b")
    await zk.create("/route/a/b/c", b"1")
    await zk.set("/route/a/b/c", b"2")
    await zk.set("/route/a/b/c", b"3")  # a persistent watch fires again, unlike kazoo's
    await zk.delete("/route/a/b/c")
    await zk.create("/routes-not-below", b"")  # a prefix of the name is not below the path
    await zk.create("/route/d", b"")
    assert [await seen.next() for _ in range(7)] == [
        (ChangeKind.CREATED, "/route/a"),
        (ChangeKind.CREATED, "/route/a/b"),
        (ChangeKind.CREATED, "/route/a/b/c"),
        (ChangeKind.CHANGED, "/route/a/b/c"),
        (ChangeKind.CHANGED, "/route/a/b/c"),
        (ChangeKind.DELETED, "/route/a/b/c"),
        (ChangeKind.CREATED, "/route/d"),
    ]
    assert seen.nothing_more()
    assert client.client.connected


async def test_a_persistent_watch_sees_its_znode_only(zk, watcher):
    _client, watches, _proxy = watcher
    seen = Seen()
    added = watches.add("/node", seen.events.put, mode=WatchMode.PERSISTENT)
    await asyncio.to_thread(added.get, True, 5)
    await zk.ensure_path("/node/10.0.0.1")  # created before: a child of /node only
    await zk.set("/node", b"x")
    await zk.delete("/node/10.0.0.1")
    assert await seen.next() == (ChangeKind.CHANGED, "/node")
    assert seen.nothing_more()


async def test_the_watch_is_back_after_the_connection_was_dropped(zk, watcher):
    client, watches, proxy = watcher
    await zk.ensure_path("/function")
    seen = Seen()
    added = watches.add("/function", seen.events.put, on_rearmed=seen.rearm)
    await asyncio.to_thread(added.get, True, 5)
    proxy.cut()
    await eventually(lambda: not client.client.connected, what="connection lost")
    await zk.create("/function/while-away", b"")  # never announced: the owner walks again
    proxy.restore()
    await eventually(lambda: seen.rearmed == 1, timeout=20, what="watch added again")
    assert seen.nothing_more()
    await zk.create("/function/while-away/backends", b"x")
    assert await seen.next() == (ChangeKind.CREATED, "/function/while-away/backends")


async def test_the_watch_is_back_in_a_new_session(zk_server, zk, watcher):
    client, watches, _proxy = watcher
    await zk.ensure_path("/node")
    seen = Seen()
    added = watches.add("/node", seen.events.put, on_rearmed=seen.rearm)
    await asyncio.to_thread(added.get, True, 5)
    old_session = client.client.client_id
    await asyncio.to_thread(expire_session, client.client, zk_server.hosts)
    await eventually(lambda: seen.rearmed >= 1, timeout=20, what="watch added again")
    assert client.client.client_id != old_session
    await zk.ensure_path("/node/10.0.0.9")
    assert await seen.next() == (ChangeKind.CREATED, "/node/10.0.0.9")


async def test_a_path_that_does_not_exist_yet_can_be_watched(zk, watcher):
    _client, watches, _proxy = watcher
    seen = Seen()
    await asyncio.to_thread(watches.add("/rollout/x", seen.events.put).get, True, 5)
    await zk.ensure_path("/rollout/x/y")
    assert [await seen.next() for _ in range(2)] == [
        (ChangeKind.CREATED, "/rollout/x"),
        (ChangeKind.CREATED, "/rollout/x/y"),
    ]


async def test_closing_stops_delivery_and_a_client_is_hooked_once(zk, watcher):
    client, watches, _proxy = watcher
    await zk.ensure_path("/route")
    seen = Seen()
    await asyncio.to_thread(watches.add("/route", seen.events.put).get, True, 5)
    watches.close()
    again = PersistentWatches(client.client)  # the hook was taken out: it may go in again
    with pytest.raises(Exception, match="already has persistent watches"):
        PersistentWatches(client.client)
    others = Seen()
    await asyncio.to_thread(again.add("/route", others.events.put).get, True, 5)
    await zk.create("/route/h.test", b"")
    assert await others.next() == (ChangeKind.CREATED, "/route/h.test")
    assert seen.nothing_more()
    again.close()
