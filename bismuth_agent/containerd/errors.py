"""Errors of the containerd adapter: gRPC failures mapped onto Bismuth's error classes.

``NotFound`` lets teardown treat "already gone" as success; ``AlreadyExists`` lets setup
treat "already there" as success. Every other gRPC failure is a ``ContainerdError`` that
carries containerd's status code name and message.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import grpc

from bismuth_core import errors

P = ParamSpec("P")
T = TypeVar("T")


class ContainerdError(errors.BismuthError):
    """containerd refused or failed a call; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"containerd: {code}: {message}")
        self.code = code
        self.details = message


class NotFound(ContainerdError, errors.NotFound):
    """The object (image, content, snapshot, container, task, process) does not exist."""


class AlreadyExists(ContainerdError, errors.Conflict):
    """An object with that name or key exists already."""


class ContainerdUnavailable(ContainerdError, errors.Unavailable):
    """containerd cannot be reached (not running, socket missing) or is shutting down."""


class ImageError(errors.BismuthError):
    """An image cannot be imported, pulled or unpacked; the message says why."""

    status = 422


_BY_CODE: dict[grpc.StatusCode, type[ContainerdError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: ContainerdUnavailable,
}


def translate(exc: grpc.aio.AioRpcError) -> ContainerdError:
    """The Bismuth error for a failed gRPC call."""
    cls = _BY_CODE.get(exc.code(), ContainerdError)
    return cls(exc.code().name, exc.details() or "")


def translated(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate an async method so gRPC errors leave it as ``ContainerdError``s."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None

    return wrapper
