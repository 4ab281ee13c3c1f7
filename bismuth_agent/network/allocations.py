"""Subnet allocations that survive agent restarts: a :class:`SubnetPool` kept in a JSON file.

Every change is written before the call returns (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new state, never a torn file. Calls may
come from several worker threads; a lock serialises them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from ipaddress import IPv4Network
from pathlib import Path

from bismuth_agent.files import write_atomically

from .addressing import SubnetPool
from .model import Allocation, NetworkStateError

log = logging.getLogger(__name__)


class AllocationStore:
    """``reserve``/``lookup``/``release`` of container subnets, persisted in ``path``."""

    def __init__(self, path: str | os.PathLike[str], network: IPv4Network) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pool = _load(self.path, network)

    def lookup(self, container_id: str) -> Allocation | None:
        with self._lock:
            return self._pool.lookup(container_id)

    def reserve(self, container_id: str) -> Allocation:
        with self._lock:
            if (existing := self._pool.lookup(container_id)) is not None:
                return existing
            allocation = self._pool.reserve(container_id)
            self._save()
        log.info("allocated subnet %s", allocation.subnet, extra={"container_id": container_id})
        return allocation

    def claim(self, container_id: str, subnet: IPv4Network) -> Allocation:
        with self._lock:
            if (existing := self._pool.lookup(container_id)) and existing.subnet == subnet:
                return existing
            allocation = self._pool.claim(container_id, subnet)
            self._save()
        log.warning(
            "re-recorded subnet %s found on the host",
            subnet,
            extra={"container_id": container_id},
        )
        return allocation

    def release(self, container_id: str) -> Allocation | None:
        with self._lock:
            released = self._pool.release(container_id)
            if released is not None:
                self._save()
        if released is not None:
            log.info("released subnet %s", released.subnet, extra={"container_id": container_id})
        return released

    def allocations(self) -> list[Allocation]:
        with self._lock:
            return self._pool.allocations()

    def _save(self) -> None:
        write_atomically(self.path, json.dumps(self._pool.to_json(), indent=1) + "\n")


def _load(path: Path, network: IPv4Network) -> SubnetPool:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return SubnetPool(network)
    except OSError as exc:
        raise NetworkStateError(f"cannot read {path}: {exc}") from exc
    try:
        return SubnetPool.from_json(network, json.loads(text))
    except (ValueError, NetworkStateError) as exc:
        raise NetworkStateError(
            f"{path}: {exc}; move it away to rebuild allocations from the host's interfaces"
        ) from exc
