"""``bismuthctl tenant ...`` and ``token ...`` against a real ZooKeeper and a real API."""

from __future__ import annotations

import uuid

import pytest

from bismuth_core import operations, tenancy, tokens
from bismuth_core.definition import parse_definition
from tests.support.apiserver import bearer, definition

pytestmark = pytest.mark.integration


async def test_tenant_create_prints_a_token_that_works_on_the_api(ctl, api, standins, http):
    await standins.add()
    made = await ctl("--json", "tenant", "create", "Ünïcödé 東京")
    assert made.code == 0, made.err
    doc = made.json()
    assert doc["name"] == "Ünïcödé 東京" and doc["token"].startswith("bth_")
    assert set(doc) >= {"id", "name", "token", "token_id", "created"}
    headers = bearer(doc["token"])
    body = definition(routes=[{"hostname": "t.example"}])
    async with http.post(f"{api.url}/function", json=body, headers=headers) as resp:
        assert resp.status == 200
        fid = (await resp.json())["id"]
    async with http.get(f"{api.url}/function/{fid}", headers=headers) as resp:
        assert (await resp.json())["tenant"] == doc["id"]

    text = await ctl("tenant", "create", "plain")
    assert text.code == 0 and "shown once" in text.out
    token_line = text.out.strip().splitlines()[-1]
    assert token_line.startswith("bth_") and len(token_line) == 64


async def test_duplicate_and_bad_names(ctl, zk):
    assert (await ctl("tenant", "create", "acme")).code == 0
    before = await tenancy.list_tenants(zk)
    dup = await ctl("tenant", "create", "ACME")
    assert dup.code == 4 and "already exists" in dup.err and "Traceback" not in dup.err
    for bad in ("", " x", "a\tb", "x" * 65):
        run = await ctl("--json", "tenant", "create", bad)
        assert run.code == 2 and "tenant name" in run.json()["error"], bad
    assert await tenancy.list_tenants(zk) == before


async def test_list_and_delete(ctl, zk, standins):
    await standins.add()
    made = (await ctl("--json", "tenant", "create", "acme")).json()
    listed = (await ctl("--json", "tenant", "list")).json()["tenants"]
    assert [t["name"] for t in listed] == ["acme"]
    table = await ctl("tenant", "list")
    assert "acme" in table.out and made["id"] in table.out
    fid = await operations.create_function(
        zk, parse_definition(definition(routes=[])), owner=uuid.UUID(made["id"])
    )
    refused = await ctl("tenant", "delete", "acme")
    assert refused.code == 4 and "owns 1 function" in refused.err
    await operations.delete_function(zk, fid)
    gone = await ctl("--json", "tenant", "delete", "ACME")
    assert gone.code == 0 and gone.json()["deleted"] is True
    assert (await ctl("tenant", "delete", "acme")).code == 3
    assert made["token"] not in (await ctl("--json", "token", "list")).out


async def test_tokens_issue_list_revoke(ctl, api, http):
    made = (await ctl("--json", "tenant", "create", "acme")).json()
    issued = await ctl("--json", "token", "issue", "acme")
    assert issued.code == 0 and issued.json()["scope"] == "tenant"
    second = issued.json()["token"]
    listing = await ctl("--json", "token", "list", "acme")
    ids = {t["id"] for t in listing.json()["tokens"]}
    assert ids == {made["token_id"], issued.json()["id"]}
    for secret in (made["token"], second):
        assert secret not in listing.out
    admin = await ctl("--json", "token", "issue", "--scope", "admin")
    assert admin.code == 0 and admin.json()["tenant"] is None
    async with http.get(f"{api.url}/metrics", headers=bearer(admin.json()["token"])) as resp:
        assert resp.status == 200
    assert (await ctl("token", "issue", "acme", "--scope", "admin")).code == 2
    assert (await ctl("token", "issue")).code == 2
    assert (await ctl("token", "issue", "nobody")).code == 3

    revoked = await ctl("--json", "token", "revoke", issued.json()["id"])
    assert revoked.code == 0 and revoked.json()["revoked"] is True
    async with http.get(f"{api.url}/function", headers=bearer(second)) as resp:
        assert resp.status == 401
    assert (await ctl("token", "revoke", issued.json()["id"])).code == 3
    assert (await ctl("token", "revoke", "zz")).code == 2


async def test_register_an_admin_token_from_a_file(ctl, api, http, tmp_path):
    made = tokens.issue()
    path = tmp_path / "admin.token"
    path.write_text(made.text + "\n")
    first = await ctl("--json", "token", "register", str(path))
    assert first.code == 0 and first.json() == {"id": made.id, "changed": True}
    assert (await ctl("--json", "token", "register", str(path))).json()["changed"] is False
    async with http.get(f"{api.url}/metrics", headers=bearer(made.text)) as resp:
        assert resp.status == 200
    path.write_text("garbage")
    assert (await ctl("token", "register", str(path))).code == 2
    assert (await ctl("token", "register", str(tmp_path / "missing"))).code == 2
