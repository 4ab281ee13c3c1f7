"""Persistent watches: the request's bytes, which paths a watch covers, and the refusal of a
kazoo release whose connection the hook was not checked against."""

from __future__ import annotations

import re

import pytest
from kazoo.client import KazooClient

from bismuth_core import zkwatch
from bismuth_core.zkwatch import AddWatch, PersistentWatches, WatchHookMissing, WatchMode


def test_add_watch_is_the_path_then_the_mode() -> None:
    request = AddWatch("/env/route", WatchMode.PERSISTENT_RECURSIVE)
    assert request.type == 106
    assert bytes(request.serialize()) == b"\x00\x00\x00\x0a/env/route\x00\x00\x00\x01"


@pytest.mark.parametrize(
    ("watched", "mode", "path", "covered"),
    [
        ("/e/route", WatchMode.PERSISTENT_RECURSIVE, "/e/route", True),
        ("/e/route", WatchMode.PERSISTENT_RECURSIVE, "/e/route/a/b/c", True),
        ("/e/route", WatchMode.PERSISTENT_RECURSIVE, "/e/routes", False),
        ("/e/route", WatchMode.PERSISTENT_RECURSIVE, "/e", False),
        ("/", WatchMode.PERSISTENT_RECURSIVE, "/anything/below", True),
        ("/e/route", WatchMode.PERSISTENT, "/e/route", True),
        ("/e/route", WatchMode.PERSISTENT, "/e/route/a", False),
    ],
)
def test_which_paths_a_watch_covers(
    watched: str, mode: WatchMode, path: str, covered: bool
) -> None:
    watch = zkwatch._Watch(watched, mode, print, print, print)
    assert watch.covers(path) is covered


def test_another_kazoo_release_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zkwatch.kazoo.version, "__version__", "2.12.0")
    with pytest.raises(WatchHookMissing, match=re.escape("this is kazoo 2.12.0")):
        PersistentWatches(KazooClient(hosts="127.0.0.1:1"))


def test_a_connection_without_the_hook_point_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(zkwatch.ConnectionHandler, "_read_watch_event")
    with pytest.raises(WatchHookMissing, match=re.escape("no ConnectionHandler._read_watch_event")):
        zkwatch.check_kazoo()
