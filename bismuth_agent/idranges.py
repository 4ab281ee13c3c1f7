"""Host id ranges for the containers' user namespaces: one range per container.

Container ids ``0..size-1`` of each container map onto a host range of its own, taken from a
pool of ``count`` ranges starting at ``start`` (range ``i`` is ``start + i * size``). Two
containers never share a host id: :class:`IdPool` hands each range to one container at a
time, the lowest free first, so that ranges (and the image snapshots remapped for them) are
reused once released. :class:`IdRangeStore` keeps the pool in a JSON file in the agent's
state directory, written before each call returns: an agent restart adopts it. A range
found in use on the host that the pool does not know (a state file lost, or containers made
before ranges were per container) is claimed if free, refused if another container holds it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from bismuth_core.errors import BismuthError, Conflict, InsufficientCapacity

from .files import write_atomically
from .spec import IdMapping

log = logging.getLogger(__name__)


class IdPoolError(BismuthError):
    """The pool's state file cannot be read."""


class IdPool:
    """Container → host range start, with no I/O."""

    def __init__(
        self, start: int, size: int, count: int, held: Mapping[uuid.UUID, int] | None = None
    ) -> None:
        self.start, self.size, self.count = start, size, count
        self._held: dict[uuid.UUID, int] = dict(held or {})
        if len(set(self._held.values())) != len(self._held):
            raise IdPoolError("two containers hold the same host id range")

    def lookup(self, cid: uuid.UUID) -> IdMapping | None:
        host_start = self._held.get(cid)
        return None if host_start is None else IdMapping(host_start, self.size)

    def allocate(self, cid: uuid.UUID) -> IdMapping:
        """The container's range; the lowest free one if it has none."""
        if (existing := self.lookup(cid)) is not None:
            return existing
        used = set(self._held.values())
        for index in range(self.count):
            host_start = self.start + index * self.size
            if host_start not in used:
                self._held[cid] = host_start
                return IdMapping(host_start, self.size)
        raise InsufficientCapacity(
            f"all {self.count} host id ranges are in use (id_map_count): no room for a container"
        )

    def free(self, count: int) -> list[IdMapping]:
        """The ``count`` ranges the next allocations hand out (the lowest free ones)."""
        used = set(self._held.values())
        starts = (self.start + index * self.size for index in range(self.count))
        return [IdMapping(s, self.size) for s in starts if s not in used][:count]

    def claim(self, cid: uuid.UUID, mapping: IdMapping) -> IdMapping:
        """Record a range found in use by ``cid``; :class:`Conflict` if another holds it."""
        if mapping.size != self.size:
            raise Conflict(f"maps {mapping.size} ids, not {self.size} (id_map_size)")
        for other, host_start in self._held.items():
            if host_start == mapping.host_start and other != cid:
                raise Conflict(f"shares host ids {host_start}+ with container {other}")
        self._held[cid] = mapping.host_start
        return mapping

    def release(self, cid: uuid.UUID) -> IdMapping | None:
        host_start = self._held.pop(cid, None)
        return None if host_start is None else IdMapping(host_start, self.size)

    def holders(self) -> set[uuid.UUID]:
        return set(self._held)

    def to_json(self) -> dict[str, object]:
        return {str(cid): host_start for cid, host_start in sorted(self._held.items())}


class IdRangeStore:
    """:class:`IdPool` kept in ``path``; each change is on disk before the call returns."""

    def __init__(self, path: str | Path, start: int, size: int, count: int) -> None:
        self.path = Path(path)
        self.pool = IdPool(start, size, count, _load(self.path))

    def lookup(self, cid: uuid.UUID) -> IdMapping | None:
        return self.pool.lookup(cid)

    def allocate(self, cid: uuid.UUID) -> IdMapping:
        if (existing := self.pool.lookup(cid)) is not None:
            return existing
        mapping = self.pool.allocate(cid)
        self._save()
        log.info("host ids %d+ allocated", mapping.host_start, extra={"container_id": cid})
        return mapping

    def claim(self, cid: uuid.UUID, mapping: IdMapping) -> IdMapping:
        if self.pool.lookup(cid) == mapping:
            return mapping
        self.pool.claim(cid, mapping)
        self._save()
        log.info("host ids %d+ found in use", mapping.host_start, extra={"container_id": cid})
        return mapping

    def free(self, count: int) -> list[IdMapping]:
        return self.pool.free(count)

    def release(self, cid: uuid.UUID) -> None:
        if self.pool.release(cid) is not None:
            self._save()

    def keep_only(self, containers: Iterable[uuid.UUID]) -> None:
        """Release the ranges of containers not in ``containers`` (gone while no agent ran)."""
        keep = set(containers)
        for cid in self.pool.holders() - keep:
            self.release(cid)

    def _save(self) -> None:
        write_atomically(self.path, json.dumps(self.pool.to_json(), indent=1) + "\n")


def _load(path: Path) -> dict[uuid.UUID, int]:
    try:
        raw = json.loads(path.read_text())
        return {uuid.UUID(cid): int(start) for cid, start in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise IdPoolError(f"cannot read the id range pool {path}: {exc}") from None


def mapping_of(pid: int) -> IdMapping | None:
    """The host range a running process's user namespace maps (its first uid_map line)."""
    try:
        line = Path(f"/proc/{pid}/uid_map").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(line) != 3 or line[0] != "0":
        return None
    return IdMapping(int(line[1]), int(line[2]))
