"""The control plane's operations on functions, between HTTP handlers and ZooKeeper.

Handlers parse and respond; this module validates against the fleet's current limits,
calls :mod:`bismuth_core.operations` (each change one multi-op) and shapes the answers of
the fixed API contract. Secrets are sealed here with the cluster key before they are
stored; their values are never read back, logged or returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bismuth_core import cluster, layout, operations
from bismuth_core.cluster import FunctionView
from bismuth_core.definition import DefinitionLimits, FunctionDefinition, parse_definition
from bismuth_core.errors import (
    InsufficientCapacity,
    InvalidDefinition,
    InvalidRequest,
    Unavailable,
)
from bismuth_core.fleet import NodeSource
from bismuth_core.layout import Backend
from bismuth_core.secrets import SecretBox, load_cluster_key
from bismuth_core.zk import ZooKeeper

from .config import ApiConfig


class FunctionService:
    def __init__(
        self,
        zk: ZooKeeper,
        config: ApiConfig,
        nodes: NodeSource,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.zk = zk
        self.config = config
        self.nodes = nodes
        # Placements of this process are made one at a time: concurrent ones would all pick
        # the same emptiest nodes and lose version races to each other. Other processes
        # (replicas, bismuthctl) are still fenced off by the version checks.
        self.lock = lock or asyncio.Lock()

    async def limits(self, fresh: bool = False) -> DefinitionLimits:
        """Validation bounds: cpu and memory of the largest live node, else the defaults."""
        alive = [n.alive for n in (await self.nodes.nodes(fresh)).values() if n.alive]
        return DefinitionLimits(
            cpu_max=max((a.cpus for a in alive), default=0.0) or self.config.default_cpu_max,
            max_instances=self.config.max_instances,
            memory_max=max((a.memory for a in alive), default=0) or None,
            repo_http_hosts=self.config.repo_http_hosts,
        )

    async def parse(self, raw: object) -> FunctionDefinition:
        try:
            return parse_definition(raw, await self.limits())
        except InvalidDefinition as exc:
            if exc.field not in ("cpu", "memory"):
                raise
        # a node may have joined since the cache last heard: confirm from fresh reads
        return parse_definition(raw, await self.limits(fresh=True))

    async def create(self, raw: object) -> uuid.UUID:
        definition = await self.parse(raw)
        async with self.lock, self._no_node_big_enough(raw):
            return await operations.create_function(self.zk, definition, self.nodes)

    @contextlib.asynccontextmanager
    async def _no_node_big_enough(self, raw: object | None) -> AsyncIterator[None]:
        """A shortfall because no node could ever hold one container is a 400, not a 503."""
        try:
            yield
        except InsufficientCapacity:
            if raw is not None:
                parse_definition(raw, await self.limits(fresh=True))
            raise

    async def get(self, fid: uuid.UUID) -> dict[str, Any]:
        return await self.describe(await cluster.read_function(self.zk, fid))

    async def list(self) -> list[dict[str, Any]]:
        return [await self.describe(view) for view in await cluster.read_functions(self.zk)]

    async def update(self, fid: uuid.UUID, raw: object | None) -> dict[str, Any]:
        definition = None if raw is None else await self.parse(raw)
        async with self.lock, self._no_node_big_enough(raw):
            view = await operations.update_function(self.zk, fid, definition, self.nodes)
        return await self.describe(view)

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


class SecretService:
    """Secrets of functions: set (sealed with the cluster key), list by name, delete."""

    def __init__(self, zk: ZooKeeper, box: SecretBox | None) -> None:
        self.zk = zk
        self.box = box

    def require_key(self) -> SecretBox:
        if self.box is None:
            raise Unavailable(
                "no cluster key configured: set cluster_key or cluster_key_file in the "
                "API's configuration to store secrets"
            )
        return self.box

    async def set(self, fid: uuid.UUID, name: str, value: bytes) -> bool:
        """Store ``value`` sealed; True if the secret is new, False if it was replaced."""
        sealed = self.require_key().seal(fid, name, value)
        return await operations.set_secret(self.zk, fid, name, sealed)

    async def names(self, fid: uuid.UUID) -> list[str]:
        return await operations.secret_names(self.zk, fid)

    async def delete(self, fid: uuid.UUID, name: str) -> None:
        await operations.delete_secret(self.zk, fid, name)


def secret_box(config: ApiConfig) -> SecretBox | None:
    """The cluster key's box if one is configured; :class:`ConfigError` if it is unusable."""
    if not config.cluster_key and not config.cluster_key_file:
        return None
    return SecretBox(load_cluster_key(config.cluster_key, config.cluster_key_file))
