"""Placement of containers onto nodes: pure functions over a snapshot of the fleet.

A node can take a container when it is enabled, its agent is alive and its free cpu and
memory (advertised capacity minus what its containers reserve, each container also costing
the node's per-container overhead: its provider's memory limit) cover the request. Among
those, replicas of one function go to distinct nodes where possible (fewest replicas of the
function first), then to the node with the most free capacity.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

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
    # Derived once (every placement reads them for every node):
    free_cpu: float = field(init=False, repr=False, compare=False)
    free_memory: int = field(init=False, repr=False, compare=False)
    schedulable: bool = field(init=False, repr=False, compare=False)
    room: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        free_cpu = self.cpus - self.reserved_cpu
        free_memory = self.memory - self.reserved_memory - self.overhead * self.containers
        room = 0.0
        if self.cpus > 0 and self.memory > 0:
            room = min(free_cpu / self.cpus, free_memory / self.memory)
        object.__setattr__(self, "free_cpu", free_cpu)
        object.__setattr__(self, "free_memory", free_memory)
        object.__setattr__(self, "schedulable", self.enabled and self.alive)
        object.__setattr__(self, "room", room)

    def fits(self, cpu: float, memory: int) -> bool:
        return self.free_cpu + _EPSILON >= cpu and self.free_memory >= memory + self.overhead

    def headroom(self) -> float:
        """Smallest free share of cpu or memory, 0..1: the node's room for more work."""
        return self.room

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
    # Best first: fewest replicas of the function, most headroom, then the address. Only a
    # chosen node's key changes, so one heap serves every pick (no pass per container).
    need_cpu, need_memory = cpu - _EPSILON, memory
    ranked = [
        (spread[n.ip], -n.room, n.ip)
        for n in pool.values()
        if n.free_cpu >= need_cpu and n.free_memory >= need_memory + n.overhead
    ]
    heapq.heapify(ranked)
    chosen: list[str] = []
    for _ in range(count):
        if not ranked:
            raise InsufficientCapacity(_shortfall(pool.values(), count, len(chosen), cpu, memory))
        _, _, ip = heapq.heappop(ranked)
        best = pool[ip] = pool[ip].reserve(cpu, memory)
        spread[ip] += 1
        chosen.append(ip)
        if best.fits(cpu, memory):
            heapq.heappush(ranked, (spread[ip], -best.headroom(), ip))
    return chosen


def place_in_order(
    ranked: Iterable[NodeCapacity],
    count: int,
    cpu: float,
    memory: int,
    *,
    exclude: Collection[str] = (),
    replicas: Mapping[str, int] | None = None,
) -> list[str] | None:
    """What :func:`place` chooses, found without ranking every node: ``ranked`` yields the
    nodes by most headroom first, then address (as a cache keeps them), and the walk stops
    at the first ``count`` that fit and hold no replica of the function. ``None`` when there
    are fewer such nodes than ``count``: then :func:`place` decides."""
    spread = replicas or {}
    chosen: list[str] = []
    for node in ranked:
        if len(chosen) == count:
            break
        if node.ip in exclude or spread.get(node.ip) or not node.schedulable:
            continue
        if node.fits(cpu, memory):
            chosen.append(node.ip)
    return chosen if len(chosen) == count else None


def rank_key(node: NodeCapacity) -> tuple[float, str]:
    """Where ``node`` stands in the order :func:`place_in_order` walks."""
    return (-node.room, node.ip)


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
