"""What a caller may see and act on: its tenant's functions and groups, or, for an admin, all.

A tenant token acts for its own tenant only; another tenant's function or group is 404 to
it on every verb, exactly as if it did not exist. An admin acts for any tenant: the
``tenant`` query parameter (a tenant's id or name) names the one it acts for on creates,
and filters listings; without it an admin creates in the ``default`` tenant and lists
everything.
"""

from __future__ import annotations

import uuid

from bismuth_core import groups, layout, tenancy
from bismuth_core.errors import Forbidden, NotFound
from bismuth_core.tenancy import Caller
from bismuth_core.zk import ZooKeeper


class TenantScope:
    """Resolves the tenant a request acts for, and whether it may touch a function."""

    def __init__(self, zk: ZooKeeper) -> None:
        self.zk = zk

    async def acting(self, caller: Caller, ref: str | None) -> uuid.UUID | None:
        """The tenant ``caller`` acts for (``ref``: the ``tenant`` parameter); ``None`` is an
        admin acting for every tenant."""
        if not caller.is_admin:
            if ref is not None and await self._resolve_or_none(ref) != caller.tenant:
                raise Forbidden("a tenant token acts for its own tenant only")
            return caller.tenant
        if ref is None:
            return None
        return (await tenancy.find_tenant(self.zk, ref)).id

    async def creating(self, caller: Caller, ref: str | None) -> uuid.UUID:
        """The tenant a new thing belongs to: the acting one, or ``default`` for an admin."""
        acting = await self.acting(caller, ref)
        if acting is not None:
            return acting
        return (await tenancy.ensure_tenant(self.zk, tenancy.DEFAULT_TENANT)).id

    async def _resolve_or_none(self, ref: str) -> uuid.UUID | None:
        try:
            return (await tenancy.find_tenant(self.zk, ref)).id
        except NotFound:
            return None

    @staticmethod
    def may_see(caller: Caller, owner: uuid.UUID | None) -> bool:
        return caller.is_admin or (owner is not None and owner == caller.tenant)

    async def check_function(self, caller: Caller, fid: uuid.UUID) -> None:
        """:class:`NotFound` unless ``caller`` may act on function ``fid``."""
        if caller.is_admin:
            return
        got = await self.zk.get_or_none(layout.owner_path(fid))
        if not self.may_see(caller, layout.decode_owner(got[0]) if got else None):
            raise NotFound(f"function {fid} not found")


class GroupService:
    """Service groups: ``POST /group``, ``GET /group``, ``DELETE /group/<id>``."""

    def __init__(self, zk: ZooKeeper, scope: TenantScope) -> None:
        self.zk = zk
        self.scope = scope

    async def create(self, caller: Caller, ref: str | None) -> uuid.UUID:
        return await groups.create_group(self.zk, await self.scope.creating(caller, ref))

    async def list(self, caller: Caller, ref: str | None) -> list[dict[str, str]]:
        acting = await self.scope.acting(caller, ref)
        tenants = [acting] if acting else [t.id for t in await tenancy.list_tenants(self.zk)]
        return [
            {"id": str(gid), "tenant": str(tid)}
            for tid in tenants
            for gid in await groups.list_groups(self.zk, tid)
        ]

    async def delete(self, caller: Caller, gid: uuid.UUID) -> None:
        if not caller.is_admin:
            assert caller.tenant is not None
            await groups.delete_group(self.zk, caller.tenant, gid)
            return
        for tenant in await tenancy.list_tenants(self.zk):
            if await self.zk.exists(layout.tenant_group_path(tenant.id, gid)) is not None:
                await groups.delete_group(self.zk, tenant.id, gid)
                return
        raise NotFound(f"no service group {gid}")
