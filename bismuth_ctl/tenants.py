"""``bismuthctl tenant ...`` and ``bismuthctl token ...``: tenants and their API tokens.

A token's text is printed once, when it is made (``tenant create``, ``token issue``); only
its hash is stored, so it cannot be shown again. Listings show ids, never tokens or hashes.
Tenants are named by id or by name (names ignore case).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bismuth_core import tenancy, tokens
from bismuth_core.errors import InvalidRequest
from bismuth_core.tenancy import Tenant, TokenInfo
from bismuth_core.tokens import Scope
from bismuth_core.zk import ZooKeeper

from .commands import Command, CommandGroup, Outcome
from .tables import render_table

KEEP = "shown once: keep it (only its hash is stored)"


async def tenant_create(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    tenant, issued = await tenancy.create_tenant(zk, args.name)
    assert issued is not None
    doc = {**tenant.to_json(), "token": issued.text, "token_id": issued.id}
    text = f"tenant {tenant.name!r} created, id {tenant.id}\ntoken ({KEEP}):\n{issued.text}"
    return Outcome(doc, text)


async def tenant_list(zk: ZooKeeper, _args: argparse.Namespace) -> Outcome:
    tenants = await tenancy.list_tenants(zk)
    rows = []
    for t in tenants:
        rows.append([t.id, t.name, len(await tenancy.tenant_function_ids(zk, t.id)), _created(t)])
    table = render_table(["id", "name", "functions", "created"], rows)
    return Outcome({"tenants": [t.to_json() for t in tenants]}, table if tenants else "no tenants")


async def tenant_delete(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    tenant = await tenancy.delete_tenant(zk, (await tenancy.find_tenant(zk, args.tenant)).id)
    text = f"tenant {tenant.name!r} ({tenant.id}) deleted, with its tokens and service groups"
    return Outcome({**tenant.to_json(), "deleted": True}, text)


def _created(tenant: Tenant | TokenInfo) -> str:
    return str(tenant.to_json()["created"])


async def token_issue(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    scope = Scope(args.scope)
    if (scope == Scope.TENANT) != (args.tenant is not None):
        raise InvalidRequest(
            "a tenant token needs TENANT; an admin token is for every tenant: give no TENANT"
        )
    tenant = await tenancy.find_tenant(zk, args.tenant) if args.tenant is not None else None
    info, issued = await tenancy.issue_token(zk, tenant.id if tenant else None, scope)
    whose = f"of tenant {tenant.name!r}" if tenant else "with admin scope"
    text = f"token {info.id} issued {whose}\ntoken ({KEEP}):\n{issued.text}"
    return Outcome({**info.to_json(), "token": issued.text}, text)


async def token_list(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    tenant = await tenancy.find_tenant(zk, args.tenant) if args.tenant is not None else None
    found = await tenancy.list_tokens(zk, tenant.id if tenant else None)
    rows = [[t.id, t.scope, t.tenant, _created(t)] for t in found]
    table = render_table(["id", "scope", "tenant", "created"], rows)
    return Outcome({"tokens": [t.to_json() for t in found]}, table if found else "no tokens")


async def token_revoke(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    info = await tenancy.revoke_token(zk, args.id)
    return Outcome({**info.to_json(), "revoked": True}, f"token {info.id} revoked")


async def token_register(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    try:
        text = Path(args.file).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    changed = await tenancy.register_admin_token(zk, text)
    presented = tokens.parse(text.strip())
    token_id = presented.id if presented else "?"
    what = "registered" if changed else "already registered; nothing changed"
    return Outcome({"id": token_id, "changed": changed}, f"admin token {token_id} {what}")


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help=f"the tenant's name: {tenancy.NAME_RULE}")


def _tenant_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant", metavar="TENANT", help="the tenant's id or name")


def _optional_tenant(help_text: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("tenant", metavar="TENANT", nargs="?", help=help_text)

    return add


def _issue_arguments(parser: argparse.ArgumentParser) -> None:
    _optional_tenant("the tenant (id or name) the token acts for; none with --scope admin")(parser)
    parser.add_argument(
        "--scope",
        choices=[str(s) for s in Scope],
        default=str(Scope.TENANT),
        help="tenant: that tenant's functions only (default); admin: every tenant's",
    )


def _id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="the token's id (16 hex digits)")


def _file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="file holding the token (bth_...)")


COMMANDS = (
    CommandGroup(
        "tenant",
        "create, list and delete tenants",
        (
            Command(
                "create",
                "create a tenant and its first token (printed once)",
                tenant_create,
                arguments=_name_argument,
            ),
            Command("list", "list tenants", tenant_list),
            Command(
                "delete",
                "delete a tenant with its tokens and groups (refused while it owns functions)",
                tenant_delete,
                arguments=_tenant_argument,
            ),
        ),
    ),
    CommandGroup(
        "token",
        "issue, list and revoke API tokens",
        (
            Command(
                "issue",
                "issue a token of TENANT, or an admin token (printed once)",
                token_issue,
                arguments=_issue_arguments,
            ),
            Command(
                "list",
                "list tokens (ids and scopes, never the tokens) of TENANT, or all",
                token_list,
                arguments=_optional_tenant("the tenant (id or name); none: every token"),
            ),
            Command("revoke", "revoke a token at once", token_revoke, arguments=_id_argument),
            Command(
                "register",
                "store the hash of an admin token read from FILE (the deploy's; idempotent)",
                token_register,
                arguments=_file_argument,
            ),
        ),
    ),
)
