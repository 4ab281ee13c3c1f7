"""The control plane's operations on functions, between HTTP handlers and ZooKeeper.

Handlers parse and respond; this module validates against the fleet's current limits,
calls :mod:`bismuth_core.operations` (each change one multi-op) and shapes the answers of
the fixed API contract.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from bismuth_core import cluster, layout, operations
from bismuth_core.cluster import FunctionView
from bismuth_core.definition import DefinitionLimits, FunctionDefinition, parse_definition
from bismuth_core.errors import InvalidRequest
from bismuth_core.layout import Backend
from bismuth_core.zk import ZooKeeper

from .config import ApiConfig

LIMITS_TTL = 1.0  # seconds a reading of the fleet's largest node is reused


@dataclass
class _CachedLimits:
    limits: DefinitionLimits
    read_at: float


class FunctionService:
    def __init__(self, zk: ZooKeeper, config: ApiConfig) -> None:
        self.zk = zk
        self.config = config
        self._limits: _CachedLimits | None = None

    async def limits(self) -> DefinitionLimits:
        """Validation bounds: cpu and memory of the largest live node, else the defaults."""
        now = time.monotonic()
        if self._limits and now - self._limits.read_at < LIMITS_TTL:
            return self._limits.limits
        nodes = [n for n in (await cluster.read_nodes(self.zk)).values() if n.alive]
        limits = DefinitionLimits(
            cpu_max=max((n.alive.cpus for n in nodes if n.alive), default=0.0)
            or self.config.default_cpu_max,
            max_instances=self.config.max_instances,
            memory_max=max((n.alive.memory for n in nodes if n.alive), default=0) or None,
            repo_schemes=self.config.repo_schemes,
        )
        self._limits = _CachedLimits(limits, now)
        return limits

    async def parse(self, raw: object) -> FunctionDefinition:
        return parse_definition(raw, await self.limits())

    async def create(self, raw: object) -> uuid.UUID:
        return await operations.create_function(self.zk, await self.parse(raw))

    async def get(self, fid: uuid.UUID) -> dict[str, Any]:
        return await self.describe(await cluster.read_function(self.zk, fid))

    async def list(self) -> list[dict[str, Any]]:
        return [await self.describe(view) for view in await cluster.read_functions(self.zk)]

    async def update(self, fid: uuid.UUID, raw: object | None) -> dict[str, Any]:
        definition = None if raw is None else await self.parse(raw)
        return await self.describe(await operations.update_function(self.zk, fid, definition))

    async def delete(self, fid: uuid.UUID) -> None:
        await operations.delete_function(self.zk, fid)

    async def backends(self, fid: uuid.UUID) -> tuple[Backend, ...]:
        return (await cluster.read_function(self.zk, fid)).backends

    async def describe(self, view: FunctionView) -> dict[str, Any]:
        statuses = await cluster.read_statuses(self.zk, view.backends)
        return {
            "id": str(view.id),
            "definition": view.definition.to_json(),
            "backends": [
                {
                    "backend": b.to_json(),
                    "status": cluster.status_label(statuses[b]),
                    "retiring": b in view.retiring,
                }
                for b in view.backends
            ],
        }


def parse_function_id(text: str) -> uuid.UUID:
    fid = layout.parse_uuid(text)
    if fid is None:
        raise InvalidRequest(f"function id {text!r} is not a UUID")
    return fid
