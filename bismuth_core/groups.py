"""Service groups of a tenant: which ``svc_group_id`` a function may name.

A function's provider scopes its data by ``svc_group_id`` (default: the function's own id).
A tenant may name only its own groups: one of its own functions' ids, or a group it made
with :func:`create_group`. :func:`guard_ops` checks that and returns the ops that keep it
true until the function's multi-op commits: a group's znode is rewritten (its version
bumped), so :func:`delete_group`, which checks that no function uses the group and deletes
it guarded by the version it read, fails instead of racing a new user.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from . import layout
from .cluster import read_function_or_none
from .definition import FunctionDefinition
from .errors import Conflict, InvalidDefinition, NotFound
from .operations import retry_races
from .zk import NoNodeError, Op, ZooKeeper, check, delete, set_data

log = logging.getLogger(__name__)


async def create_group(zk: ZooKeeper, tenant: uuid.UUID) -> uuid.UUID:
    """A new service group of ``tenant``; :class:`NotFound` if the tenant does not exist."""
    gid = uuid.uuid4()
    try:
        await zk.create(layout.tenant_group_path(tenant, gid))
    except NoNodeError as exc:
        raise NotFound(f"no tenant {tenant}") from exc
    log.info("service group %s created for tenant %s", gid, tenant)
    return gid


async def list_groups(zk: ZooKeeper, tenant: uuid.UUID) -> list[uuid.UUID]:
    names = await zk.children(layout.tenant_groups_path(tenant))
    return sorted(g for g in map(layout.parse_uuid, names) if g)


async def users(zk: ZooKeeper, tenant: uuid.UUID, gid: uuid.UUID) -> list[uuid.UUID]:
    """The tenant's functions whose definition names ``gid`` as their service group."""
    names = await zk.children(layout.tenant_functions_path(tenant))
    fids = [f for f in map(layout.parse_uuid, names) if f]
    views = await asyncio.gather(*(read_function_or_none(zk, f) for f in fids))
    return [v.id for v in views if v and v.definition.svc_group_id == gid]


async def delete_group(zk: ZooKeeper, tenant: uuid.UUID, gid: uuid.UUID) -> None:
    """Delete an unused group; :class:`Conflict` naming a function that still uses it."""
    path = layout.tenant_group_path(tenant, gid)

    async def attempt() -> None:
        stat = await zk.exists(path)
        if stat is None:
            raise NotFound(f"no service group {gid}")
        using = await users(zk, tenant, gid)
        if using:
            raise Conflict(
                f"service group {gid} is used by {len(using)} function(s), e.g. {using[0]}"
            )
        await zk.commit([delete(path, stat.version)])

    await retry_races(attempt, "delete service group")
    log.info("service group %s of tenant %s deleted", gid, tenant)


async def guard_ops(
    zk: ZooKeeper,
    tenant: uuid.UUID | None,
    definition: FunctionDefinition,
    current: FunctionDefinition | None = None,
    own_id: uuid.UUID | None = None,
) -> list[Op]:
    """Ops pinning ``definition``'s service group to ``tenant``; refused if it is not its own.

    No group, the function's own id, or the group ``current`` (the definition being
    replaced) already had need no check. Anything else must be a group ``tenant`` made or
    one of its functions: otherwise :class:`InvalidDefinition` names ``svc_group_id``,
    whether that id exists elsewhere or not. A function without a tenant (made before
    tenants, not adopted yet) may name no other group.
    """
    gid = definition.svc_group_id
    if gid is None or gid == own_id or (current is not None and current.svc_group_id == gid):
        return []
    if tenant is None:
        raise InvalidDefinition("svc_group_id", "a function without a tenant keeps its own group")
    group, function = await asyncio.gather(
        zk.exists(layout.tenant_group_path(tenant, gid)),
        zk.exists(layout.tenant_function_path(tenant, gid)),
    )
    if group is not None:
        return [set_data(layout.tenant_group_path(tenant, gid), b"", group.version)]
    if function is not None:
        return [check(layout.tenant_function_path(tenant, gid), function.version)]
    raise InvalidDefinition(
        "svc_group_id",
        f"{gid} is not a service group of this tenant: name one of its own functions "
        "or a group it created (POST /group)",
    )
