"""Running blocking work inside another network namespace, on one short-lived thread.

``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread, so the work runs on a new
thread that enters the namespace and ends with the work: the event loop's and kazoo's threads
never change namespace, and nothing forks. What the work opens there stays in that namespace
when used elsewhere: sockets, netlink handles, and child processes started from that thread.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from bismuth_core.errors import NotFound

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


def run_in_netns(path: str | None, work: Callable[[], T]) -> T:
    """``work()`` inside the network namespace at ``path`` (None: right here). Blocks."""
    if path is None:
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            enter_netns(path)
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=enter_and_run, name=f"netns {path}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def open_netns(path: str) -> int:
    """A file descriptor of the network namespace at ``path``; NotFound if there is none."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {path} does not exist") from exc


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = open_netns(path)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
