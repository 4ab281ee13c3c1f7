"""Tenants, tokens and service groups in a real ZooKeeper: each change whole or not at all."""

from __future__ import annotations

import uuid

import pytest

from bismuth_core import groups, layout, operations, tenancy, tokens
from bismuth_core.definition import parse_definition
from bismuth_core.errors import Conflict, InvalidDefinition, InvalidRequest, NotFound
from bismuth_core.tokens import Scope
from bismuth_core.zk import ZooKeeper
from tests.support.apiserver import definition

pytestmark = pytest.mark.integration


async def tree(zk: ZooKeeper, path: str = "/") -> dict[str, bytes]:
    """Every znode of the environment with its data: to show that nothing changed."""
    data = await zk.get_or_none(path)
    found = {path: data[0] if data else b""}
    for child in await zk.children(path):
        found.update(await tree(zk, f"{path.rstrip('/')}/{child}"))
    return found


def function(**changes: object):
    return parse_definition(definition(routes=[], **changes))


async def test_create_tenant_records_it_and_its_first_token(zk):
    tenant, issued = await tenancy.create_tenant(zk, "Ünïcödé Café 東京")
    assert issued is not None
    assert await tenancy.find_tenant(zk, "ÜNÏCÖDÉ CAFÉ 東京") == tenant
    assert await tenancy.find_tenant(zk, str(tenant.id)) == tenant
    (info,) = await tenancy.list_tokens(zk, tenant.id)
    assert (info.id, info.tenant, info.scope) == (issued.id, tenant.id, Scope.TENANT)
    stored = (await zk.get(layout.token_path(issued.id)))[0]
    secret = issued.text.split("_", 2)[2]  # base64url: it may itself hold "_", even first
    assert issued.text.encode() not in stored and secret.encode() not in stored
    assert [t.name for t in await tenancy.list_tenants(zk)] == ["Ünïcödé Café 東京"]


@pytest.mark.parametrize("again", ["acme", "ACME", "Acme"])
async def test_a_taken_name_is_a_conflict_and_changes_nothing(zk, again):
    await tenancy.create_tenant(zk, "acme")
    before = await tree(zk)
    with pytest.raises(Conflict, match="already exists"):
        await tenancy.create_tenant(zk, again)
    assert await tree(zk) == before


@pytest.mark.parametrize("name", ["", " padded", "x" * 65, "line\nbreak", str(uuid.uuid4())])
async def test_a_bad_name_is_refused_and_changes_nothing(zk, name):
    before = await tree(zk)
    with pytest.raises(InvalidRequest, match="tenant name"):
        await tenancy.create_tenant(zk, name)
    assert await tree(zk) == before


async def test_tokens_issue_list_revoke(zk):
    tenant, first = await tenancy.create_tenant(zk, "acme")
    assert first is not None
    second, _ = await tenancy.issue_token(zk, tenant.id)
    admin, _ = await tenancy.issue_token(zk, None, Scope.ADMIN)
    assert {t.id for t in await tenancy.list_tokens(zk, tenant.id)} == {first.id, second.id}
    assert {t.id for t in await tenancy.list_tokens(zk)} == {first.id, second.id, admin.id}
    await tenancy.revoke_token(zk, second.id)
    assert [t.id for t in await tenancy.list_tokens(zk, tenant.id)] == [first.id]
    assert await zk.exists(layout.tenant_token_path(tenant.id, second.id)) is None
    with pytest.raises(NotFound):
        await tenancy.revoke_token(zk, second.id)
    with pytest.raises(InvalidRequest):
        await tenancy.revoke_token(zk, "../tenant")
    with pytest.raises(InvalidRequest):
        await tenancy.issue_token(zk, tenant.id, Scope.ADMIN)
    with pytest.raises(NotFound):
        await tenancy.issue_token(zk, uuid.uuid4())


async def test_register_admin_token_is_idempotent(zk):
    made = tokens.issue()
    assert await tenancy.register_admin_token(zk, made.text + "\n") is True
    assert await tenancy.register_admin_token(zk, made.text) is False
    (info,) = [t for t in await tenancy.list_tokens(zk) if t.id == made.id]
    assert info.scope == Scope.ADMIN and info.tenant is None
    with pytest.raises(InvalidRequest):
        await tenancy.register_admin_token(zk, "not a token")


async def test_deleting_a_tenant_is_refused_while_it_owns_functions(zk, standins):
    await standins.add()
    tenant, issued = await tenancy.create_tenant(zk, "acme")
    assert issued is not None
    gid = await groups.create_group(zk, tenant.id)
    fid = await operations.create_function(zk, function(), owner=tenant.id)
    with pytest.raises(Conflict, match="owns 1 function"):
        await tenancy.delete_tenant(zk, tenant.id)
    await operations.delete_function(zk, fid)
    assert await zk.exists(layout.owner_path(fid)) is None
    before = await tree(zk)
    await tenancy.delete_tenant(zk, tenant.id)
    gone = set(before) - set(await tree(zk))
    assert gone == {
        layout.tenant_path(tenant.id),
        layout.tenant_functions_path(tenant.id),
        layout.tenant_groups_path(tenant.id),
        layout.tenant_group_path(tenant.id, gid),
        layout.tenant_tokens_path(tenant.id),
        layout.tenant_token_path(tenant.id, issued.id),
        layout.token_path(issued.id),
        layout.tenant_name_path("acme"),
    }
    again, _ = await tenancy.create_tenant(zk, "acme")  # the name is free again
    assert again.id != tenant.id


async def test_a_function_created_while_its_tenant_is_deleted_keeps_the_tenant(
    zk, interleaved, standins
):
    await standins.add()
    tenant, _ = await tenancy.create_tenant(zk, "acme")
    made: list[uuid.UUID] = []

    async def create_meanwhile() -> None:
        made.append(await operations.create_function(zk, function(), owner=tenant.id))

    interleaved.before = create_meanwhile
    with pytest.raises(Conflict, match="owns 1 function"):
        await tenancy.delete_tenant(interleaved, tenant.id)
    assert await tenancy.tenant_function_ids(zk, tenant.id) == made
    assert await tenancy.read_tenant(zk, tenant.id) == tenant


async def test_a_function_of_a_deleted_tenant_is_not_created(zk, interleaved, standins):
    await standins.add()
    tenant, _ = await tenancy.create_tenant(zk, "acme")
    before = await tree(zk)
    interleaved.before = lambda: tenancy.delete_tenant(zk, tenant.id)
    with pytest.raises(NotFound, match="tenant"):
        await operations.create_function(interleaved, function(), owner=tenant.id)
    after = await tree(zk)
    assert not [p for p in after if p.startswith(layout.FUNCTIONS + "/")]
    assert set(after) < set(before)


async def test_the_default_tenant_is_never_deleted(zk):
    await tenancy.bootstrap(zk)
    default = await tenancy.find_tenant(zk, "default")
    with pytest.raises(Conflict, match="default tenant"):
        await tenancy.delete_tenant(zk, default.id)


async def test_service_groups_name_only_the_tenants_own(zk, standins):
    await standins.add()
    acme, _ = await tenancy.create_tenant(zk, "acme")
    other, _ = await tenancy.create_tenant(zk, "other")
    own_fid = await operations.create_function(zk, function(), owner=acme.id)
    other_fid = await operations.create_function(zk, function(), owner=other.id)
    gid = await groups.create_group(zk, acme.id)
    other_gid = await groups.create_group(zk, other.id)
    for group in (gid, own_fid):
        assert await groups.guard_ops(zk, acme.id, function(svc_group_id=str(group)))
    for group in (other_gid, other_fid, uuid.uuid4()):
        with pytest.raises(InvalidDefinition) as refused:
            await groups.guard_ops(zk, acme.id, function(svc_group_id=str(group)))
        assert refused.value.field == "svc_group_id"
    assert await groups.list_groups(zk, acme.id) == [gid]


async def test_a_group_in_use_is_not_deleted(zk, interleaved, standins):
    await standins.add()
    acme, _ = await tenancy.create_tenant(zk, "acme")
    gid = await groups.create_group(zk, acme.id)
    uses = function(svc_group_id=str(gid))

    async def guards():
        return await groups.guard_ops(zk, acme.id, uses)

    fid = await operations.create_function(zk, uses, owner=acme.id, guards=guards)
    with pytest.raises(Conflict, match=str(fid)):
        await groups.delete_group(zk, acme.id, gid)
    await operations.delete_function(zk, fid)
    # a new user arriving between the check and the delete wins: the group stays
    interleaved.before = lambda: operations.create_function(zk, uses, owner=acme.id, guards=guards)
    with pytest.raises(Conflict, match="used by 1 function"):
        await groups.delete_group(interleaved, acme.id, gid)
    assert await groups.list_groups(zk, acme.id) == [gid]


async def test_functions_made_before_tenants_are_adopted_once(zk, standins):
    await standins.add()
    old = [await operations.create_function(zk, function()) for _ in range(2)]
    assert await tenancy.tenant_by_name(zk, "default") is None
    assert await tenancy.bootstrap(zk) is True
    default = await tenancy.find_tenant(zk, "default")
    assert await tenancy.tenant_function_ids(zk, default.id) == sorted(old)
    for fid in old:
        assert layout.decode_owner((await zk.get(layout.owner_path(fid)))[0]) == default.id
    assert await tenancy.bootstrap(zk) is False
