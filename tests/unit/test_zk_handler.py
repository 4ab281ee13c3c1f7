"""kazoo's connection loop waits through the handler's select: ours uses poll(2)."""

from __future__ import annotations

import socket

from bismuth_core.zk import PollingHandler, ZooKeeper


def test_every_client_waits_with_the_polling_handler() -> None:
    assert isinstance(ZooKeeper("127.0.0.1:1").client.handler, PollingHandler)


def test_select_reports_what_is_readable_and_times_out_on_nothing() -> None:
    handler = PollingHandler()
    quiet, quiet_peer = socket.socketpair()
    ready, ready_peer = socket.socketpair()
    with quiet, quiet_peer, ready, ready_peer:
        ready_peer.send(b"x")
        assert handler.select([quiet, ready], [], [], 1.0) == ([ready], [], [])
        assert handler.select([quiet], [], [], 0.01) == ([], [], [])
        assert handler.select([], [quiet], [], 0.01) == ([], [quiet], [])
