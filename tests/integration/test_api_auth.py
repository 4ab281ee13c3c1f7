"""Who may do what through bismuth-api: tokens, tenants and service groups, over real HTTP.

The matrix calls every endpoint as each kind of caller: no token, a malformed one, a revoked
one, another tenant's, the owner's and an admin's. A function of another tenant is 404 on
every verb, with the same answer as one that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bismuth_core import cluster, tenancy, tokens
from tests.support.apiserver import Api, bearer, definition
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CALLERS = ("none", "malformed", "revoked", "other", "own", "admin")
UNAUTHENTICATED = {"none": 401, "malformed": 401, "revoked": 401}


@dataclass
class World:
    """An API with two tenants (``alpha`` owns the targets, ``beta`` is the other one)."""

    api: Api
    http: aiohttp.ClientSession
    headers: dict[str, dict[str, str]]
    alpha: tenancy.Tenant
    beta: tenancy.Tenant
    hosts: int = 0

    async def call(
        self, caller: str, method: str, path: str, body: object = None, raw: bytes | None = None
    ) -> tuple[int, object, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        url = self.api.url + path
        async with self.http.request(method, url, data=data, headers=self.headers[caller]) as r:
            text = await r.text()
            try:
                parsed: object = json.loads(text)
            except ValueError:
                parsed = text
            return r.status, parsed, dict(r.headers)

    def definition(self, **changes: object) -> dict[str, object]:
        self.hosts += 1
        return definition(routes=[{"hostname": f"h{self.hosts}.example"}], **changes)

    async def function(self, caller: str = "own", **changes: object) -> str:
        status, body, _ = await self.call(caller, "POST", "/function", self.definition(**changes))
        assert status == 200, body
        assert isinstance(body, dict)
        return str(body["id"])

    async def group(self, caller: str = "own") -> str:
        status, body, _ = await self.call(caller, "POST", "/group")
        assert status == 200 and isinstance(body, dict), body
        return str(body["id"])


@pytest.fixture
async def world(api_config, standins) -> AsyncIterator[World]:
    await standins.add(cpus=64.0, memory=1 << 40)
    api = Api(api_config)
    await api.start()
    alpha, own = await api.tenant("alpha")
    beta, other = await api.tenant("beta")
    revoked = (await tenancy.issue_token(api.zk, alpha.id))[1]
    await tenancy.revoke_token(api.zk, revoked.id)
    headers = {
        "none": {},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "revoked": bearer(revoked.text),
        "other": bearer(other),
        "own": bearer(own),
        "admin": api.admin,
    }
    async with aiohttp.ClientSession() as http:
        world = World(api, http, headers, alpha, beta)

        async def revocation_seen() -> bool:  # the API's token cache hears of it by a watch
            return (await world.call("revoked", "GET", "/function"))[0] == 401

        await eventually(revocation_seen, timeout=2.0, what="the API to see the revocation")
        yield world
    await api.stop()


Request = tuple[str, str, object, bytes | None]  # method, path, JSON body, raw body
Prepare = Callable[[World], Awaitable[Request]]


async def _create(w: World) -> Request:
    return "POST", "/function", w.definition(), None


async def _list(w: World) -> Request:
    await w.function()
    return "GET", "/function", None, None


async def _on_function(w: World, method: str, suffix: str = "", **kw: object) -> Request:
    fid = await w.function()
    if suffix.startswith("/secrets/"):
        assert (await w.call("own", "PUT", f"/function/{fid}/secrets/pw", raw=b"x"))[0] == 204
    return method, f"/function/{fid}{suffix}", kw.get("body"), kw.get("raw")  # type: ignore[return-value]


async def _group_delete(w: World) -> Request:
    return "DELETE", f"/group/{await w.group()}", None, None


def fixed(method: str, path: str) -> Prepare:
    async def prepare(_w: World) -> Request:
        return method, path, None, None

    return prepare


def on_function(method: str, suffix: str = "", **kw: object) -> Prepare:
    async def prepare(w: World) -> Request:
        return await _on_function(w, method, suffix, **kw)

    return prepare


def expect(other: int, own: int, admin: int | None = None) -> dict[str, int]:
    return {**UNAUTHENTICATED, "other": other, "own": own, "admin": own if admin is None else admin}


MATRIX: list[tuple[str, Prepare, dict[str, int]]] = [
    ("create function", _create, expect(200, 200)),
    ("list functions", _list, expect(200, 200)),
    ("get function", on_function("GET"), expect(404, 200)),
    ("update function", on_function("PUT", body=definition(routes=[])), expect(404, 200)),
    ("redeploy function", on_function("PUT"), expect(404, 200)),
    ("delete function", on_function("DELETE"), expect(404, 200)),
    ("logs", on_function("GET", "/logs"), expect(404, 200)),
    ("list secrets", on_function("GET", "/secrets"), expect(404, 200)),
    ("set secret", on_function("PUT", "/secrets/pw", raw=b"v"), expect(404, 204)),
    ("delete secret", on_function("DELETE", "/secrets/pw"), expect(404, 204)),
    ("create group", fixed("POST", "/group"), expect(200, 200)),
    ("list groups", fixed("GET", "/group"), expect(200, 200)),
    ("delete group", _group_delete, expect(404, 200)),
    ("metrics", fixed("GET", "/metrics"), expect(403, 403, 200)),
    ("health", fixed("GET", "/healthz"), dict.fromkeys(CALLERS, 200)),
    ("openapi", fixed("GET", "/openapi.json"), dict.fromkeys(CALLERS, 200)),
    ("status", fixed("GET", "/status"), expect(200, 200)),
    ("status page", fixed("GET", "/ui/"), dict.fromkeys(CALLERS, 200)),
    ("unknown path", fixed("GET", "/nothing"), expect(404, 404)),
]


@pytest.mark.parametrize(("what", "prepare", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
async def test_every_endpoint_as_every_caller(world, what, prepare, expected):
    for caller in CALLERS:
        method, path, body, raw = await prepare(world)
        status, answer, headers = await world.call(caller, method, path, body, raw)
        assert status == expected[caller], (what, caller, answer)
        if status >= 400:
            assert isinstance(answer, dict) and answer["error"], (what, caller, answer)
        if status == 401:
            assert headers["WWW-Authenticate"].startswith("Bearer"), (what, caller)
        if caller == "other" and status == 404 and path.startswith("/function/"):
            fid = path.split("/")[2]
            assert answer == {"error": f"function {fid} not found"}  # as if it did not exist
            assert await cluster.read_function_or_none(world.api.zk, uuid.UUID(fid))


async def test_listings_show_each_tenant_its_own(world):
    mine, theirs = await world.function("own"), await world.function("other")
    own_group, their_group = await world.group("own"), await world.group("other")
    listed = {c: (await world.call(c, "GET", "/function"))[1] for c in ("own", "other", "admin")}
    assert [f["id"] for f in listed["own"]] == [mine]  # type: ignore[index]
    assert [f["id"] for f in listed["other"]] == [theirs]  # type: ignore[index]
    assert {f["id"] for f in listed["admin"]} == {mine, theirs}  # type: ignore[index]
    assert listed["own"][0]["tenant"] == str(world.alpha.id)  # type: ignore[index]
    _, groups, _ = await world.call("own", "GET", "/group")
    assert groups == [{"id": own_group, "tenant": str(world.alpha.id)}]
    _, everything, _ = await world.call("admin", "GET", "/group")
    assert {g["id"] for g in everything} == {own_group, their_group}  # type: ignore[union-attr,index]
    _, filtered, _ = await world.call("admin", "GET", "/function?tenant=beta")
    assert [f["id"] for f in filtered] == [theirs]  # type: ignore[union-attr,index]


async def test_an_admin_acts_for_a_tenant_named_by_id_or_name(world):
    for ref in ("alpha", str(world.alpha.id), "ALPHA"):
        status, body, _ = await world.call(
            "admin", "POST", f"/function?tenant={ref}", world.definition()
        )
        assert status == 200, body
        status, got, _ = await world.call("own", "GET", f"/function/{body['id']}")  # type: ignore[index]
        assert status == 200 and got["tenant"] == str(world.alpha.id)  # type: ignore[index]
    status, body, _ = await world.call("admin", "POST", "/function", world.definition())
    default = await tenancy.find_tenant(world.api.zk, "default")
    assert (await world.call("admin", "GET", f"/function/{body['id']}"))[1]["tenant"] == str(  # type: ignore[index]
        default.id
    )
    status, body, _ = await world.call("admin", "POST", "/function?tenant=nobody", {})
    assert status in (400, 404)
    status, body, _ = await world.call(
        "admin", "POST", "/function?tenant=nobody", world.definition()
    )
    assert status == 404 and "nobody" in body["error"]  # type: ignore[index]


async def test_a_tenant_token_acts_for_its_own_tenant_only(world):
    for ref in ("beta", "nobody", str(uuid.uuid4())):
        status, body, _ = await world.call(
            "own", "POST", f"/function?tenant={ref}", world.definition()
        )
        assert status == 403, body
    status, _, _ = await world.call("own", "POST", "/function?tenant=alpha", world.definition())
    assert status == 200
    assert len(await tenancy.tenant_function_ids(world.api.zk, world.beta.id)) == 0


async def test_svc_group_id_of_another_tenant_is_refused(world):
    theirs_fid, theirs_gid = await world.function("other"), await world.group("other")
    mine_fid, mine_gid = await world.function("own"), await world.group("own")
    before = await tenancy.tenant_function_ids(world.api.zk, world.alpha.id)
    for foreign in (theirs_fid, theirs_gid, str(uuid.uuid4())):
        status, body, _ = await world.call(
            "own", "POST", "/function", world.definition(svc_group_id=foreign)
        )
        assert status == 400 and body["field"] == "svc_group_id", body  # type: ignore[index]
        status, body, _ = await world.call(
            "own", "PUT", f"/function/{mine_fid}", world.definition(svc_group_id=foreign)
        )
        assert status == 400 and body["field"] == "svc_group_id", body  # type: ignore[index]
    assert await tenancy.tenant_function_ids(world.api.zk, world.alpha.id) == before
    for own in (mine_fid, mine_gid):
        assert await world.function("own", svc_group_id=own)
    # an admin acting for a tenant is held to that tenant's groups too
    status, body, _ = await world.call(
        "admin", "POST", "/function?tenant=alpha", world.definition(svc_group_id=theirs_gid)
    )
    assert status == 400 and body["field"] == "svc_group_id"  # type: ignore[index]


async def test_a_group_in_use_cannot_be_deleted(world):
    gid = await world.group()
    fid = await world.function(svc_group_id=gid)
    status, body, _ = await world.call("own", "DELETE", f"/group/{gid}")
    assert status == 409 and fid in body["error"]  # type: ignore[index]
    assert (await world.call("own", "DELETE", f"/function/{fid}"))[0] == 200
    assert (await world.call("own", "DELETE", f"/group/{gid}"))[0] == 200
    assert (await world.call("own", "DELETE", f"/group/{gid}"))[0] == 404
    assert (await world.call("own", "DELETE", "/group/not-a-uuid"))[0] == 400


async def test_revoking_a_token_takes_effect_at_once(world):
    info, issued = await tenancy.issue_token(world.api.zk, world.alpha.id)
    world.headers["fresh"] = bearer(issued.text)
    assert (await world.call("fresh", "GET", "/function"))[0] == 200  # issued a moment ago
    await tenancy.revoke_token(world.api.zk, info.id)

    async def refused() -> bool:
        return (await world.call("fresh", "GET", "/function"))[0] == 401

    await eventually(refused, timeout=2.0, what="the revoked token refused")


async def raw_request(world: World, authorization: bytes) -> tuple[int, bytes, bytes]:
    """GET /function with this exact Authorization header value; (status, head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", world.api.port)
    writer.write(
        b"GET /function HTTP/1.1\r\nHost: api\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


async def test_any_authorization_bytes_get_a_4xx_never_a_5xx(world):
    loop = asyncio.get_running_loop()
    shaped = st.builds(
        lambda i, s: f"Bearer bth_{i}_{s}".encode(),
        st.text("0123456789abcdef", min_size=16, max_size=16),
        st.text("abcXYZ_-019", min_size=43, max_size=43),
    )
    values = (
        st.binary(max_size=9000).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
        | shaped
        | st.text(max_size=300).map(lambda t: ("Bearer " + t).encode("utf-8", "surrogatepass"))
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=values)
    def check(value: bytes) -> None:
        status, head, body = asyncio.run_coroutine_threadsafe(
            raw_request(world, value), loop
        ).result()
        assert 400 <= status < 500, (value[:80], status, body[:200])
        if status == 401:
            assert json.loads(body)["error"] and b"WWW-Authenticate: Bearer" in head
        else:  # refused by the HTTP parser: a control character, or a header over 8190 bytes
            assert status == 400 and body

    await asyncio.to_thread(check)
    assert (await raw_request(world, f"Bearer {tokens.issue().text}".encode()))[0] == 401
