"""The subnet pool: which /30 each container holds, as pure in-memory state (no I/O).

Allocation is next-fit: a search starts after the subnet handed out last, so a released
subnet is reused only after the rest of the pool, and late packets or stale connection
tracking of a removed container do not meet its successor. ``reserve``, ``lookup`` and
``release`` are idempotent. Subnets kept from an earlier pool setting stay allocated until
released; new ones come from the current pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from ipaddress import IPv4Network
from typing import Any

from bismuth_core.errors import Conflict, InsufficientCapacity

from .model import Allocation, NetworkStateError
from .settings import SUBNET_PREFIX

STATE_VERSION = 1


class SubnetPool:
    """Container id → /30 subnet, handed out from ``network``."""

    def __init__(
        self,
        network: IPv4Network,
        assigned: Mapping[str, IPv4Network] | None = None,
        cursor: int = 0,
    ) -> None:
        self.network = network
        self.size = 2 ** (SUBNET_PREFIX - network.prefixlen)
        self._by_container: dict[str, IPv4Network] = dict(assigned or {})
        self._in_use = set(self._by_container.values())
        if len(self._in_use) != len(self._by_container):
            raise NetworkStateError("two containers hold the same subnet")
        self.cursor = cursor % self.size

    def lookup(self, container_id: str) -> Allocation | None:
        subnet = self._by_container.get(container_id)
        return None if subnet is None else Allocation(container_id, subnet)

    def reserve(self, container_id: str) -> Allocation:
        """The container's subnet, allocating the next free one if it has none."""
        existing = self.lookup(container_id)
        if existing is not None:
            return existing
        for index in self._search_order():
            subnet = self._subnet(index)
            if subnet not in self._in_use:
                self.cursor = (index + 1) % self.size
                return self._assign(container_id, subnet)
        raise InsufficientCapacity(
            f"subnet pool {self.network} is exhausted ({len(self._in_use)} subnets in use)"
        )

    def claim(self, container_id: str, subnet: IPv4Network) -> Allocation:
        """Record a subnet found in use on the host (state file lost); idempotent."""
        if subnet.prefixlen != SUBNET_PREFIX:
            raise Conflict(f"{subnet} is not a /{SUBNET_PREFIX}")
        current = self._by_container.get(container_id)
        if current == subnet:
            return Allocation(container_id, subnet)
        if current is not None or subnet in self._in_use:
            raise Conflict(f"cannot give {subnet} to {container_id}: allocated otherwise")
        return self._assign(container_id, subnet)

    def release(self, container_id: str) -> Allocation | None:
        """Free the container's subnet; returns what it held (None if nothing)."""
        subnet = self._by_container.pop(container_id, None)
        if subnet is None:
            return None
        self._in_use.discard(subnet)
        return Allocation(container_id, subnet)

    def allocations(self) -> list[Allocation]:
        return [Allocation(c, s) for c, s in sorted(self._by_container.items())]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "pool": str(self.network),
            "cursor": self.cursor,
            "allocations": {c: str(s) for c, s in sorted(self._by_container.items())},
        }

    @classmethod
    def from_json(cls, network: IPv4Network, data: Any) -> SubnetPool:
        """Rebuild from :meth:`to_json` output; the cursor is kept only for the same pool."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise NetworkStateError(f"unsupported state (want version {STATE_VERSION})")
        raw = data.get("allocations")
        if not isinstance(raw, dict):
            raise NetworkStateError("'allocations' is not an object")
        try:
            assigned = {str(c): IPv4Network(s) for c, s in raw.items()}
        except (TypeError, ValueError) as exc:
            raise NetworkStateError(f"bad subnet in state: {exc}") from exc
        cursor = data.get("cursor", 0) if data.get("pool") == str(network) else 0
        return cls(network, assigned, cursor if isinstance(cursor, int) else 0)

    def _search_order(self) -> Iterator[int]:
        yield from range(self.cursor, self.size)
        yield from range(0, self.cursor)

    def _subnet(self, index: int) -> IPv4Network:
        base = int(self.network.network_address) + index * 2 ** (32 - SUBNET_PREFIX)
        return IPv4Network((base, SUBNET_PREFIX))

    def _assign(self, container_id: str, subnet: IPv4Network) -> Allocation:
        self._by_container[container_id] = subnet
        self._in_use.add(subnet)
        return Allocation(container_id, subnet)
