"""What every containerd call needs: the channel, the namespace and lease headers, a timeout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc

from bismuth_agent.containerd.errors import translate

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

Reply = TypeVar("Reply")


@dataclass(frozen=True)
class Connection:
    channel: grpc.aio.Channel
    namespace: str
    lease: str | None = None
    call_timeout: float | None = 60.0

    def with_(self, *, namespace: str | None = None, lease: str | None = None) -> Connection:
        return replace(
            self, namespace=namespace or self.namespace, lease=lease if lease else self.lease
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        headers = [(NAMESPACE_HEADER, self.namespace)]
        if self.lease:
            headers.append((LEASE_HEADER, self.lease))
        return tuple(headers)

    def unary(self) -> dict[str, Any]:
        """Keyword arguments of a unary call: headers and the default deadline."""
        return {"metadata": self.metadata, "timeout": self.call_timeout}

    def stream(self) -> dict[str, Any]:
        """Keyword arguments of a streaming call: headers, no deadline."""
        return {"metadata": self.metadata}

    async def call(self, method: Callable[..., Awaitable[Reply]], request: object) -> Reply:
        """A unary call with headers and deadline; failures raise ``ContainerdError``s."""
        try:
            return await method(request, **self.unary())
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
