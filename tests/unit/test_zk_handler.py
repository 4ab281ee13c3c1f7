"""kazoo's connection loop waits through the handler's select: ours uses poll(2). Its
results hand their answers to callbacks linked with ``link`` in the thread that completes
them (kazoo's connection thread) instead of through kazoo's completion thread."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import pytest

from bismuth_core.zk import Answer, PollingHandler, ZooKeeper, link


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


def _completed_on(result: Any, complete: Any) -> list[str]:
    """Link a callback to ``result``, complete it from a thread named "connection": the
    names of the threads the callback ran on."""
    ran: list[str] = []
    link(result, lambda r: ran.append(threading.current_thread().name))
    thread = threading.Thread(target=complete, name="connection")
    thread.start()
    thread.join()
    return ran


def test_an_answer_runs_its_linked_callback_in_the_thread_that_completes_it() -> None:
    handler = PollingHandler()
    handler.start()
    try:
        value = handler.async_result()
        assert isinstance(value, Answer)
        assert _completed_on(value, lambda: value.set(1)) == ["connection"]
        error = handler.async_result()
        assert _completed_on(error, lambda: error.set_exception(OSError())) == ["connection"]
        ran: list[int] = []
        link(value, lambda r: ran.append(r.get_nowait()))  # linked once completed: at once
        assert ran == [1]
    finally:
        handler.stop()


def test_a_failing_callback_is_logged_and_the_completing_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = PollingHandler()
    handler.start()
    try:
        result = handler.async_result()
        later: list[int] = []

        def fail(_result: Any) -> None:
            raise RuntimeError("callback broke")

        link(result, fail)
        link(result, lambda r: later.append(r.get_nowait()))
        with caplog.at_level(logging.ERROR, logger="bismuth_core.zk"):
            result.set(7)  # raises nothing here
        assert later == [7]
        assert "ZooKeeper callback failed" in caplog.text
    finally:
        handler.stop()


def test_kazoo_own_callbacks_still_run_on_its_completion_thread() -> None:
    handler = PollingHandler()
    handler.start()
    try:
        result = handler.async_result()
        done = threading.Event()
        ran: list[str] = []

        def record(_result: Any) -> None:
            ran.append(threading.current_thread().name)
            done.set()

        result.rawlink(record)
        thread = threading.Thread(target=lambda: result.set(1), name="connection")
        thread.start()
        thread.join()
        assert done.wait(5)
        assert ran and ran != ["connection"]
    finally:
        handler.stop()
