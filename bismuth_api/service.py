"""The control plane's operations on functions, between HTTP handlers and ZooKeeper.

Handlers parse and respond; this module checks that the caller may act on the function
(:class:`~bismuth_api.tenants.TenantScope`: another tenant's function is 404), validates
against the fleet's current limits and the tenant's service groups, calls
:mod:`bismuth_core.operations` (each change one multi-op) and shapes the answers of the
fixed API contract (plus the additive ``tenant``). Secrets are sealed here with the cluster
key before they are stored; their values are never read back, logged or returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bismuth_core import cluster, groups, layout, operations, tenancy
from bismuth_core.cluster import FunctionView
from bismuth_core.config import ConfigError
from bismuth_core.definition import DefinitionLimits, FunctionDefinition, parse_definition
from bismuth_core.errors import (
    InsufficientCapacity,
    InvalidDefinition,
    InvalidRequest,
    NotFound,
)
from bismuth_core.fleet import NodeSource
from bismuth_core.layout import Backend
from bismuth_core.secrets import SecretBox, load_cluster_key
from bismuth_core.tenancy import Caller
from bismuth_core.zk import Op, ZooKeeper

from .config import ApiConfig
from .tenants import TenantScope


class FunctionService:
    def __init__(
        self,
        zk: ZooKeeper,
        config: ApiConfig,
        nodes: NodeSource,
    ) -> None:
        self.zk = zk
        self.config = config
        self.nodes = nodes
        self.scope = TenantScope(zk)
        # Placements need no lock: the fleet cache counts each multi-op's reservations as
        # it is sent (and a placement reads the cache without yielding to other tasks), so
        # concurrent creates pick from what the ones before them left, and their multi-ops
        # reach ZooKeeper in that order. Other processes (replicas, bismuthctl) are fenced
        # off by the version checks.

    async def limits(self, fresh: bool = False) -> DefinitionLimits:
        """Validation bounds: cpu and memory of the largest live node, else the defaults."""
        largest = None if fresh else self.nodes.largest()
        if largest is None:
            alive = [n.alive for n in (await self.nodes.nodes(fresh)).values() if n.alive]
            largest = (
                max((a.cpus for a in alive), default=0.0),
                max((a.memory - a.container_overhead for a in alive), default=0),
            )
        return DefinitionLimits(
            cpu_max=largest[0] or self.config.default_cpu_max,
            max_instances=self.config.max_instances,
            memory_max=largest[1] or None,
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

    async def create(self, caller: Caller, raw: object, tenant: str | None = None) -> uuid.UUID:
        """A new function of the acting tenant (``tenant``: an admin acting for one)."""
        definition = await self.parse(raw)
        owner = await self.scope.creating(caller, tenant)

        async def guards() -> list[Op]:
            return await groups.guard_ops(self.zk, owner, definition)

        async with self._no_node_big_enough(raw):
            return await operations.create_function(
                self.zk, definition, self.nodes, owner=owner, guards=guards
            )

    @contextlib.asynccontextmanager
    async def _no_node_big_enough(self, raw: object | None) -> AsyncIterator[None]:
        """A shortfall because no node could ever hold one container is a 400, not a 503."""
        try:
            yield
        except InsufficientCapacity:
            if raw is not None:
                parse_definition(raw, await self.limits(fresh=True))
            raise

    async def read(self, caller: Caller, fid: uuid.UUID) -> FunctionView:
        """Function ``fid`` if ``caller`` may see it; :class:`NotFound` otherwise, the same
        answer as for a function that does not exist."""
        view = await cluster.read_function(self.zk, fid)
        if not self.scope.may_see(caller, view.owner):
            raise NotFound(f"function {fid} not found")
        return view

    async def get(self, caller: Caller, fid: uuid.UUID) -> dict[str, Any]:
        return await self.describe(await self.read(caller, fid))

    async def list(self, caller: Caller, tenant: str | None = None) -> list[dict[str, Any]]:
        acting = await self.scope.acting(caller, tenant)
        if acting is None:
            views = await cluster.read_functions(self.zk)
        else:
            fids = await tenancy.tenant_function_ids(self.zk, acting)
            found = await asyncio.gather(*(cluster.read_function_or_none(self.zk, f) for f in fids))
            views = [v for v in found if v is not None and v.owner == acting]
        return [await self.describe(view) for view in views]

    async def update(self, caller: Caller, fid: uuid.UUID, raw: object | None) -> dict[str, Any]:
        await self.read(caller, fid)
        definition = None if raw is None else await self.parse(raw)

        async def guards(current: FunctionView) -> list[Op]:
            if definition is None:
                return []
            return await groups.guard_ops(
                self.zk, current.owner, definition, current.definition, fid
            )

        async with self._no_node_big_enough(raw):
            view = await operations.update_function(
                self.zk, fid, definition, self.nodes, guards=guards
            )
        return await self.describe(view)

    async def delete(self, caller: Caller, fid: uuid.UUID) -> None:
        await self.read(caller, fid)
        await operations.delete_function(self.zk, fid)

    async def backends(self, caller: Caller, fid: uuid.UUID) -> tuple[Backend, ...]:
        return (await self.read(caller, fid)).backends

    async def describe(self, view: FunctionView) -> dict[str, Any]:
        statuses = await cluster.read_statuses(self.zk, view.backends)
        return {
            "id": str(view.id),
            "tenant": str(view.owner) if view.owner else None,
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


def parse_uuid_segment(text: str, what: str) -> uuid.UUID:
    found = layout.parse_uuid(text)
    if found is None:
        raise InvalidRequest(f"{what} {text!r} is not a UUID")
    return found


def parse_function_id(text: str) -> uuid.UUID:
    return parse_uuid_segment(text, "function id")


class SecretService:
    """Secrets of functions: set (sealed with the cluster key), list by name, delete.

    Each call first checks that the caller may act on the function (404 if not).
    """

    def __init__(self, zk: ZooKeeper, box: SecretBox, max_secrets: int = 64) -> None:
        self.zk = zk
        self.box = box
        self.max_secrets = max_secrets
        self.scope = TenantScope(zk)

    async def set(self, caller: Caller, fid: uuid.UUID, name: str, value: bytes) -> bool:
        """Store ``value`` sealed; True if the secret is new, False if it was replaced."""
        await self.scope.check_function(caller, fid)
        sealed = self.box.seal(fid, name, value)
        return await operations.set_secret(self.zk, fid, name, sealed, self.max_secrets)

    async def names(self, caller: Caller, fid: uuid.UUID) -> list[str]:
        await self.scope.check_function(caller, fid)
        return await operations.secret_names(self.zk, fid)

    async def delete(self, caller: Caller, fid: uuid.UUID, name: str) -> None:
        await self.scope.check_function(caller, fid)
        await operations.delete_secret(self.zk, fid, name)


def cluster_key(config: ApiConfig) -> bytes:
    """The cluster key: it seals secrets, and the API's credentials derive from it.

    :class:`ConfigError` if it is missing or unusable: the API cannot run without it.
    """
    if not config.cluster_key and not config.cluster_key_file:
        raise ConfigError(
            "config cluster_key_file: required (or cluster_key): it seals function secrets "
            "and the API's credentials for the agents derive from it"
        )
    return load_cluster_key(config.cluster_key, config.cluster_key_file)
