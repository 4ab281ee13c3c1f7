"""Placement of containers onto nodes: pure functions over a snapshot of the fleet.

A node can take a container when it is enabled, its agent is alive and its free cpu and
memory (advertised capacity minus what its containers reserve, each container also costing
the node's per-container overhead: its provider's memory limit) cover the request. Among
those, replicas of one function go to distinct nodes where possible (fewest replicas of the
function first), then to the node with the most free capacity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from .errors import InsufficientCapacity

_EPSILON = 1e-9


@dataclass(frozen=True)
class NodeCapacity:
    ip: str
    cpus: float
    memory: int
    reserved_cpu: float = 0.0
    reserved_memory: int = 0
    enabled: bool = True
    alive: bool = True
    containers: int = 0  # what it holds now
    overhead: int = 0  # memory per container beyond the container's own (its provider)

    @property
    def free_cpu(self) -> float:
        return self.cpus - self.reserved_cpu

    @property
    def free_memory(self) -> int:
        return self.memory - self.reserved_memory - self.overhead * self.containers

    @property
    def schedulable(self) -> bool:
        return self.enabled and self.alive

    def fits(self, cpu: float, memory: int) -> bool:
        return self.free_cpu + _EPSILON >= cpu and self.free_memory >= memory + self.overhead

    def headroom(self) -> float:
        """Smallest free share of cpu or memory, 0..1: the node's room for more work."""
        if self.cpus <= 0 or self.memory <= 0:
            return 0.0
        return min(self.free_cpu / self.cpus, self.free_memory / self.memory)

    def reserve(self, cpu: float, memory: int) -> NodeCapacity:
        return replace(
            self,
            reserved_cpu=self.reserved_cpu + cpu,
            reserved_memory=self.reserved_memory + memory,
            containers=self.containers + 1,
        )


def place(
    nodes: Iterable[NodeCapacity],
    count: int,
    cpu: float,
    memory: int,
    *,
    exclude: Collection[str] = (),
    replicas: Mapping[str, int] | None = None,
) -> list[str]:
    """Node IPs for ``count`` containers of ``cpu``/``memory`` each, or raise.

    ``replicas`` counts the function's containers already on each node (spread them out);
    ``exclude`` lists nodes that must not be used (a drained or lost node).
    Raises :class:`InsufficientCapacity` naming the shortfall when not all fit.
    """
    pool = {n.ip: n for n in nodes if n.schedulable and n.ip not in exclude}
    spread: Counter[str] = Counter(replicas or {})
    chosen: list[str] = []
    for _ in range(count):
        fitting = [n for n in pool.values() if n.fits(cpu, memory)]
        if not fitting:
            raise InsufficientCapacity(_shortfall(pool.values(), count, len(chosen), cpu, memory))
        best = min(fitting, key=lambda n: (spread[n.ip], -n.headroom(), n.ip))
        pool[best.ip] = best.reserve(cpu, memory)
        spread[best.ip] += 1
        chosen.append(best.ip)
    return chosen


def _shortfall(
    pool: Iterable[NodeCapacity], count: int, placed: int, cpu: float, memory: int
) -> str:
    nodes = list(pool)
    if not nodes:
        return f"cannot place {count} container(s): no enabled node with a live agent"
    most_cpu = round(max(n.free_cpu for n in nodes), 6)  # no float residue like 1.1e-16
    most_mem = max(n.free_memory for n in nodes)
    return (
        f"cannot place {count - placed} of {count} container(s) needing cpu {cpu:g} and "
        f"memory {memory} bytes each: {len(nodes)} live enabled node(s), the most free "
        f"cpu on one node is {max(most_cpu, 0):g} and the most free memory {max(most_mem, 0)} bytes"
    )
