"""The subtree mirror applies changes in ZooKeeper's order: a deletion that follows a change
still being read waits for that read (pure logic: a fake client whose answers the test
hands out in the order ZooKeeper would)."""

from __future__ import annotations

from collections import deque
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from bismuth_core.subtree import SubtreeMirror
from bismuth_core.zkwatch import ChangeKind, WatchEvent

STAT = ZnodeStat(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


class Pending:
    """An async result answered later, by the test."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.callbacks: list[Any] = []
        self.value: Any = None
        self.exception: BaseException | None = None

    def rawlink(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def successful(self) -> bool:
        return self.exception is None


class FakeClient:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store
        self.sent: deque[Pending] = deque()  # answered first in, first out, as ZooKeeper does

    def get_async(self, path: str) -> Pending:
        self.sent.append(Pending(path))
        return self.sent[-1]

    def get_children_async(self, path: str) -> Pending:
        self.sent.append(Pending(path))
        self.sent[-1].listing = True
        return self.sent[-1]

    def answer_next(self) -> str:
        pending = self.sent.popleft()
        if pending.path in self.store and getattr(pending, "listing", False):
            prefix = pending.path + "/"
            pending.value = [p[len(prefix) :] for p in self.store if p.startswith(prefix)]
        elif pending.path in self.store:
            pending.value = (self.store[pending.path], STAT)
        else:
            pending.exception = NoNodeError()
        for callback in pending.callbacks:
            callback(pending)
        return pending.path


class FakeZooKeeper:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.client = FakeClient(store)

    def threadsafe(self, callback: Any) -> Any:
        return callback


async def test_a_deletion_waits_for_the_read_of_an_earlier_change():
    store = {"/r": b"", "/r/new": b"Starting", "/r/old": b"Running"}
    zk = FakeZooKeeper(store)
    changed: list[str] = []
    mirror = SubtreeMirror(
        zk, "/r", wants_data=lambda p: p != "/r", on_change=changed.append, on_loaded=lambda: None
    )
    mirror._start_walk()
    zk.client.answer_next()  # the root's children
    while zk.client.sent:
        zk.client.answer_next()
    assert (mirror.data("/r/new"), mirror.data("/r/old")) == (b"Starting", b"Running")
    changed.clear()

    # ZooKeeper: the new container turns Running, then the old one is deleted
    store["/r/new"] = b"Running"
    mirror._on_event(WatchEvent(ChangeKind.CHANGED, "/r/new"))
    del store["/r/old"]
    mirror._on_event(WatchEvent(ChangeKind.DELETED, "/r/old"))
    assert mirror.data("/r/old") == b"Running"  # not before the change read ahead of it
    assert changed == []
    while zk.client.sent:
        zk.client.answer_next()
    assert (mirror.data("/r/new"), mirror.data("/r/old")) == (b"Running", None)
    assert changed == ["/r/new", "/r/old"]
