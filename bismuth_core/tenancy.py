"""Tenants and their tokens in ZooKeeper, each change one guarded multi-op.

Used by ``bismuthctl`` (tenant and token management), by the deploy (the operator's admin
token) and by the API (the ``default`` tenant, adopting functions of a cluster that predates
tenants). Where things live is :mod:`bismuth_core.layout`'s business; the token format is
:mod:`bismuth_core.tokens`'. Service groups are in :mod:`bismuth_core.groups`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from . import layout, tokens
from .errors import Conflict, InvalidRequest, NotFound
from .layout import TenantRecord, TokenRecord
from .operations import ownership_ops, retry_races
from .tokens import IssuedToken, PresentedToken, Scope
from .zk import NodeExistsError, NoNodeError, Op, TransactionFailed, ZooKeeper, create, delete

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"  # owns what was made before tenants existed, and the sample
MAX_NAME_LENGTH = 64
NAME_RULE = (
    f"1-{MAX_NAME_LENGTH} printable characters (any script), without leading or trailing "
    "spaces, and not a UUID"
)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    created: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"id": str(self.id), "name": self.name, "created": _iso(self.created)}


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: never its secret, never its hash."""

    id: str
    tenant: uuid.UUID | None
    scope: Scope
    created: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tenant": str(self.tenant) if self.tenant else None,
            "scope": str(self.scope),
            "created": _iso(self.created),
        }


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its token's id and scope, and its tenant (``None``: admin)."""

    token_id: str
    scope: Scope
    tenant: uuid.UUID | None

    @property
    def is_admin(self) -> bool:
        return self.scope == Scope.ADMIN


def authenticate(presented: PresentedToken, record: TokenRecord | None) -> Caller | None:
    """The caller ``presented`` stands for, given the token record stored under its id."""
    if record is None or not tokens.matches(presented, record.sha256):
        return None
    return Caller(presented.id, Scope(record.scope), record.tenant)


def validate_tenant_name(name: object) -> str:
    """``name`` in NFC form if it is a valid tenant name; :class:`InvalidRequest` if not."""
    if not isinstance(name, str):
        raise InvalidRequest(f"tenant name must be a string: use {NAME_RULE}")
    normal = unicodedata.normalize("NFC", name)
    if (
        not 1 <= len(normal) <= MAX_NAME_LENGTH
        or not normal.isprintable()
        or normal != normal.strip()
        or layout.parse_uuid(normal) is not None
    ):
        shown = normal if len(normal) <= 80 else normal[:80] + "..."
        raise InvalidRequest(f"tenant name {shown!r} is invalid: use {NAME_RULE}")
    return normal


# --- tenants --------------------------------------------------------------------------


def _tenant_ops(tenant: Tenant) -> list[Op]:
    tid = tenant.id
    return [
        create(layout.tenant_path(tid), TenantRecord(tenant.name, tenant.created).encode()),
        create(layout.tenant_functions_path(tid)),
        create(layout.tenant_groups_path(tid)),
        create(layout.tenant_tokens_path(tid)),
        create(layout.tenant_name_path(tenant.name), layout.encode_owner(tid)),
    ]


def _token_ops(issued: IssuedToken, tenant: uuid.UUID | None, scope: Scope) -> list[Op]:
    record = TokenRecord(tenant, str(scope), issued.digest, time.time())
    ops = [create(layout.token_path(issued.id), record.encode())]
    if tenant is not None:
        ops.append(create(layout.tenant_token_path(tenant, issued.id)))
    return ops


async def create_tenant(
    zk: ZooKeeper, name: object, *, first_token: bool = True
) -> tuple[Tenant, IssuedToken | None]:
    """A new tenant named ``name`` and, unless ``first_token`` is False, its first token.

    :class:`Conflict` if a tenant of that name (ignoring case) exists; nothing is created then.
    """
    tenant = Tenant(uuid.uuid4(), validate_tenant_name(name), time.time())
    ops = _tenant_ops(tenant)
    issued = tokens.issue() if first_token else None
    if issued is not None:
        ops += _token_ops(issued, tenant.id, Scope.TENANT)
    try:
        await zk.commit(ops)
    except TransactionFailed as exc:
        path = ops[exc.index].path
        if isinstance(exc.cause, NodeExistsError) and path.startswith(layout.TENANT_NAMES + "/"):
            raise Conflict(f"a tenant named {tenant.name!r} already exists") from exc
        if isinstance(exc.cause, NoNodeError):
            raise NotFound(f"environment {zk.env!r} has no tenants yet: bootstrap it") from exc
        raise
    log.info("tenant %s (%s) created", tenant.name, tenant.id)
    return tenant, issued


async def read_tenant(zk: ZooKeeper, tid: uuid.UUID) -> Tenant | None:
    got = await zk.get_or_none(layout.tenant_path(tid))
    record = TenantRecord.decode(got[0]) if got else None
    return Tenant(tid, record.name, record.created) if record else None


async def tenant_by_name(zk: ZooKeeper, name: str) -> Tenant | None:
    got = await zk.get_or_none(layout.tenant_name_path(name))
    tid = layout.decode_owner(got[0]) if got else None
    return await read_tenant(zk, tid) if tid else None


async def find_tenant(zk: ZooKeeper, ref: str) -> Tenant:
    """The tenant whose id or name (ignoring case) is ``ref``; :class:`NotFound` if none."""
    tid = layout.parse_uuid(ref)
    found = await read_tenant(zk, tid) if tid else await tenant_by_name(zk, ref)
    if found is None:
        raise NotFound(f"no tenant {ref!r}")
    return found


async def list_tenants(zk: ZooKeeper) -> list[Tenant]:
    tids = [t for t in map(layout.parse_uuid, await zk.children(layout.TENANTS)) if t]
    found = await asyncio.gather(*(read_tenant(zk, t) for t in tids))
    return sorted((t for t in found if t), key=lambda t: (t.name.casefold(), str(t.id)))


async def ensure_tenant(zk: ZooKeeper, name: str) -> Tenant:
    """The tenant named ``name``, created (without a token) if there is none."""
    for _ in range(3):
        found = await tenant_by_name(zk, name)
        if found is not None:
            return found
        try:
            return (await create_tenant(zk, name, first_token=False))[0]
        except Conflict:
            continue  # made concurrently: read it
    raise Conflict(f"tenant {name!r} is being created and deleted concurrently")


async def tenant_function_ids(zk: ZooKeeper, tid: uuid.UUID) -> list[uuid.UUID]:
    names = await zk.children(layout.tenant_functions_path(tid))
    return sorted(f for f in map(layout.parse_uuid, names) if f)


async def delete_tenant(zk: ZooKeeper, tid: uuid.UUID) -> Tenant:
    """Delete a tenant with its tokens and groups; :class:`Conflict` while it owns functions.

    One multi-op; a function or token added meanwhile makes it fail and start again. The
    ``default`` tenant is never deleted: it owns what admins create without naming a tenant.
    """

    async def attempt() -> Tenant:
        got = await zk.get_or_none(layout.tenant_path(tid))
        record = TenantRecord.decode(got[0]) if got else None
        if got is None or record is None:
            raise NotFound(f"no tenant {tid}")
        tenant = Tenant(tid, record.name, record.created)
        if layout.tenant_name_key(tenant.name) == layout.tenant_name_key(DEFAULT_TENANT):
            raise Conflict(
                f"tenant {tenant.name!r} is the default tenant (it owns what admins create "
                "without naming a tenant); it is never deleted"
            )
        owned = await tenant_function_ids(zk, tid)
        if owned:
            raise Conflict(
                f"tenant {tenant.name!r} owns {len(owned)} function(s); delete them first "
                f"(e.g. {owned[0]})"
            )
        removal = await _tenant_removal_ops(zk, tenant)
        await zk.commit([*removal, delete(layout.tenant_path(tid), got[1].version)])
        return tenant

    tenant = await retry_races(attempt, "delete tenant")
    log.info("tenant %s (%s) deleted", tenant.name, tenant.id)
    return tenant


async def _tenant_removal_ops(zk: ZooKeeper, tenant: Tenant) -> list[Op]:
    tid = tenant.id
    token_ids = sorted(await zk.children(layout.tenant_tokens_path(tid)))
    groups = sorted(await zk.children(layout.tenant_groups_path(tid)))
    stored = await asyncio.gather(*(zk.exists(layout.token_path(t)) for t in token_ids))
    name = await zk.get_or_none(layout.tenant_name_path(tenant.name))
    return [
        *(delete(layout.token_path(t)) for t, s in zip(token_ids, stored, strict=True) if s),
        *(delete(layout.tenant_token_path(tid, t)) for t in token_ids),
        delete(layout.tenant_tokens_path(tid)),
        *(delete(f"{layout.tenant_groups_path(tid)}/{g}") for g in groups),
        delete(layout.tenant_groups_path(tid)),
        delete(layout.tenant_functions_path(tid)),  # fails if a function appeared meanwhile
        *(
            [delete(layout.tenant_name_path(tenant.name), name[1].version)]
            if name and layout.decode_owner(name[0]) == tid
            else []
        ),
    ]


# --- tokens ---------------------------------------------------------------------------


def _info(token_id: str, record: TokenRecord) -> TokenInfo:
    return TokenInfo(token_id, record.tenant, Scope(record.scope), record.created)


async def issue_token(
    zk: ZooKeeper, tenant: uuid.UUID | None, scope: Scope = Scope.TENANT
) -> tuple[TokenInfo, IssuedToken]:
    """A new token: of ``tenant`` (scope ``tenant``), or an admin token (``tenant`` None)."""
    if (scope == Scope.TENANT) != (tenant is not None):
        raise InvalidRequest("a tenant token needs its tenant; an admin token has none")
    issued = tokens.issue()
    ops = _token_ops(issued, tenant, scope)
    try:
        await zk.commit(ops)
    except TransactionFailed as exc:
        if isinstance(exc.cause, NoNodeError):
            raise NotFound(f"no tenant {tenant}" if tenant else "no token root: bootstrap") from exc
        raise
    record = TokenRecord.decode(ops[0].data)
    assert record is not None
    log.info("token %s issued (%s)", issued.id, scope)
    return _info(issued.id, record), issued


async def read_token(zk: ZooKeeper, token_id: str) -> TokenInfo | None:
    if not tokens.is_token_id(token_id):
        return None
    got = await zk.get_or_none(layout.token_path(token_id))
    record = TokenRecord.decode(got[0]) if got else None
    return _info(token_id, record) if record else None


async def list_tokens(zk: ZooKeeper, tenant: uuid.UUID | None = None) -> list[TokenInfo]:
    """Tokens of ``tenant``, or every token (admin ones included) when it is ``None``."""
    if tenant is None:
        ids = await zk.children(layout.TOKENS)
    else:
        if await zk.exists(layout.tenant_path(tenant)) is None:
            raise NotFound(f"no tenant {tenant}")
        ids = await zk.children(layout.tenant_tokens_path(tenant))
    found = await asyncio.gather(*(read_token(zk, t) for t in ids))
    return sorted((t for t in found if t), key=lambda t: (t.created, t.id))


async def revoke_token(zk: ZooKeeper, token_id: str) -> TokenInfo:
    """Delete a token (and its tenant's record of it); :class:`NotFound` if there is none."""
    if not tokens.is_token_id(token_id):
        raise InvalidRequest(f"{token_id!r} is not a token id (16 hex digits)")

    async def attempt() -> TokenInfo:
        got = await zk.get_or_none(layout.token_path(token_id))
        if got is None:
            raise NotFound(f"no token {token_id}")
        record = TokenRecord.decode(got[0])
        ops = [delete(layout.token_path(token_id), got[1].version)]
        if record and record.tenant:
            listed = layout.tenant_token_path(record.tenant, token_id)
            if await zk.exists(listed) is not None:
                ops.append(delete(listed))
        await zk.commit(ops)
        return _info(token_id, record) if record else TokenInfo(token_id, None, Scope.ADMIN)

    info = await retry_races(attempt, "revoke token")
    log.info("token %s revoked", token_id)
    return info


async def register_admin_token(zk: ZooKeeper, text: str) -> bool:
    """Store an admin token made elsewhere (the deploy's); True if anything changed."""
    presented = tokens.parse(text.strip())
    if presented is None:
        raise InvalidRequest("not a Bismuth token (bth_<16 hex>_<43 characters>)")
    record = TokenRecord(None, str(Scope.ADMIN), tokens.digest(presented.id, presented.secret))
    path = layout.token_path(presented.id)
    got = await zk.get_or_none(path)
    if got is not None:
        current = TokenRecord.decode(got[0])
        if current and current.scope == record.scope and current.sha256 == record.sha256:
            return False
        await zk.set(path, TokenRecord(None, record.scope, record.sha256, time.time()).encode())
        return True
    await zk.create(path, TokenRecord(None, record.scope, record.sha256, time.time()).encode())
    return True


# --- functions made before tenants ------------------------------------------------------


async def bootstrap(zk: ZooKeeper) -> bool:
    """The tenancy side of bootstrapping: the ``default`` tenant, owner of every function
    that has none (a cluster deployed before tenants); True if anything changed."""
    existed = await tenant_by_name(zk, DEFAULT_TENANT) is not None
    await ensure_tenant(zk, DEFAULT_TENANT)
    return await adopt_unowned(zk) > 0 or not existed


async def adopt_unowned(zk: ZooKeeper, name: str = DEFAULT_TENANT) -> int:
    """Give every function without an owner to tenant ``name`` (made if missing); how many.

    Functions of a cluster deployed before tenants existed have no owner. Each is adopted
    by one multi-op that creates both ownership records; one that another process adopted
    first is left alone. Nothing else about the function changes.
    """
    fids = [f for f in map(layout.parse_uuid, await zk.children(layout.FUNCTIONS)) if f]
    owners = await asyncio.gather(*(zk.exists(layout.owner_path(f)) for f in fids))
    unowned = [f for f, owner in zip(fids, owners, strict=True) if owner is None]
    if not unowned:
        return 0
    tenant = await ensure_tenant(zk, name)
    adopted = 0
    for fid in unowned:
        try:
            await zk.commit(ownership_ops(tenant.id, fid))
        except TransactionFailed as exc:
            if not isinstance(exc.cause, (NodeExistsError, NoNodeError)):
                raise
            continue  # adopted by someone else, or deleted meanwhile
        adopted += 1
        log.info("function adopted by tenant %s", tenant.name, extra={"function_id": fid})
    return adopted
