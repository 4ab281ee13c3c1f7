"""``bismuthctl function ...`` and ``secret set`` without a key: functions through the API.

These commands talk to ``bismuth-api`` over HTTP with a token (:mod:`bismuth_ctl.access`),
so a tenant sees and changes its own functions only. A function is named by its id or by a
hostname it answers (``ID|HOST``): a name that is not a UUID is looked up among the
functions the token may see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bismuth_core import layout
from bismuth_core.definition import normalize_hostname
from bismuth_core.errors import InvalidDefinition, InvalidRequest, NotFound

from . import deffile
from .apiclient import ApiClient
from .commands import (
    FAILED,
    ApiCommand,
    Outcome,
    read_secret_value,
    seconds,
    secret_set_arguments,
)
from .tables import format_bytes, format_cpus, render_table

WAIT_INTERVAL = 0.5  # --wait re-reads the function's status this often


async def resolve(api: ApiClient, ref: str) -> str:
    """The id of the function ``ref`` names: its id, or a hostname it answers."""
    fid = layout.parse_uuid(ref)
    if fid is not None:
        return str(fid)
    try:
        host = normalize_hostname(ref)
    except InvalidDefinition:
        raise InvalidRequest(f"{ref!r} is neither a function id nor a hostname") from None
    for doc in await api.call("GET", "/function"):
        routes = [r["hostname"] for r in doc["definition"]["routes"]]
        if host in routes:
            return str(doc["id"])
    raise NotFound(f"no function answers {host!r}")


def _tenant_params(args: argparse.Namespace) -> dict[str, str]:
    return {"tenant": args.tenant} if getattr(args, "tenant", None) else {}


def active(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The backends that serve or will serve (not those an update or drain retires)."""
    return [b for b in doc["backends"] if not b.get("retiring")]


def status_summary(doc: Mapping[str, Any]) -> str:
    """``Running``, ``Starting``..., or ``2 Running, 1 Failed`` when they differ."""
    counts = Counter(b["status"] for b in active(doc))
    if not counts:
        return "no replicas"
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _replicas(doc: Mapping[str, Any]) -> str:
    running = sum(1 for b in active(doc) if b["status"] == "Running")
    return f"{running}/{doc['definition']['max_instances']}"


def _invoke(definition: Mapping[str, Any]) -> str:
    mode = definition["invoke_mode"]
    if "Server" in mode:
        argv, port = mode["Server"]
        return f"Server: {' '.join(argv)} (port {port})"
    return f"Executable: {' '.join(mode['Executable'])}"


def _routes(definition: Mapping[str, Any]) -> str:
    return ",".join(r["hostname"] for r in definition["routes"]) or "-"


# --- handlers ----------------------------------------------------------------------------


async def function_create(api: ApiClient, args: argparse.Namespace) -> Outcome:
    definition = deffile.load(args.file)
    made = await api.call("POST", "/function", json_body=definition, params=_tenant_params(args))
    fid = str(made["id"])
    text = f"function {fid} created"
    if args.wait is None:
        return Outcome({"id": fid}, text)
    return await _waited(api, fid, args.wait, text)


async def function_update(api: ApiClient, args: argparse.Namespace) -> Outcome:
    definition = deffile.load(args.file)
    fid = await resolve(api, args.function)
    doc = await api.call("PUT", f"/function/{fid}", json_body=definition)
    text = f"function {fid} updated: new replicas start, the old ones go once they run"
    if args.wait is None:
        return Outcome(doc, text)
    return await _waited(api, fid, args.wait, text)


async def function_redeploy(api: ApiClient, args: argparse.Namespace) -> Outcome:
    fid = await resolve(api, args.function)
    doc = await api.call("PUT", f"/function/{fid}", data=b"")
    text = f"function {fid} redeployed: new replicas start, the old ones go once they run"
    if args.wait is None:
        return Outcome(doc, text)
    return await _waited(api, fid, args.wait, text)


async def _waited(api: ApiClient, fid: str, wait: float, text: str) -> Outcome:
    """Wait up to ``wait`` seconds for every replica to run and nothing to be retiring."""
    deadline = time.monotonic() + wait
    while True:
        doc = await api.call("GET", f"/function/{fid}")
        replicas = active(doc)
        done = len(replicas) == len(doc["backends"]) and all(
            b["status"] == "Running" for b in replicas
        )
        if done or time.monotonic() >= deadline:
            break
        await asyncio.sleep(WAIT_INTERVAL)
    text += f"\nreplicas: {status_summary(doc)}"
    if done:
        return Outcome(doc, text)
    error = f"timed out after {wait:g}s: function {fid} is {status_summary(doc)}"
    return Outcome(doc, text, FAILED, error)


async def function_list(api: ApiClient, args: argparse.Namespace) -> Outcome:
    docs = await api.call("GET", "/function", params=_tenant_params(args))
    rows = [
        [
            d["id"],
            _routes(d["definition"]),
            d["definition"]["image"],
            format_cpus(d["definition"]["cpu"]),
            format_bytes(d["definition"]["memory"]),
            _replicas(d),
            status_summary(d),
        ]
        for d in docs
    ]
    headers = ["id", "routes", "image", "cpu", "memory", "running", "status"]
    return Outcome({"functions": docs}, render_table(headers, rows) if docs else "no functions")


async def function_get(api: ApiClient, args: argparse.Namespace) -> Outcome:
    fid = await resolve(api, args.function)
    doc = await api.call("GET", f"/function/{fid}")
    return Outcome(doc, describe(doc))


def describe(doc: Mapping[str, Any]) -> str:
    """A function for people: its definition, then one row per replica."""
    d = doc["definition"]
    quotas = d.get("svc_quotas") or {}
    fields = [
        ("id", doc["id"]),
        ("tenant", doc.get("tenant") or "-"),
        ("routes", _routes(d)),
        ("image", d["image"]),
        ("invoke", _invoke(d)),
        ("cpu", format_cpus(d["cpu"])),
        ("memory", format_bytes(d["memory"])),
        ("replicas", f"{_replicas(doc)} running, {status_summary(doc)}"),
        ("repo", " ".join(d["repo"]) if d.get("repo") else "-"),
        ("group", d.get("svc_group_id") or "-"),
        ("quotas", ", ".join(f"{k} {format_bytes(v)}" for k, v in quotas.items()) or "-"),
    ]
    lines = [f"{name + ':':<10}{value}" for name, value in fields]
    rows = [
        [
            b["backend"]["ip"],
            b["backend"]["container_id"],
            b["status"] + (" (retiring)" if b.get("retiring") else ""),
        ]
        for b in doc["backends"]
    ]
    if rows:
        lines += ["", render_table(["node", "container", "status"], rows)]
    return "\n".join(lines)


async def function_delete(api: ApiClient, args: argparse.Namespace) -> Outcome:
    fid = await resolve(api, args.function)
    await api.call("DELETE", f"/function/{fid}")
    return Outcome({"id": fid, "deleted": True}, f"function {fid} deleted")


async def function_logs(api: ApiClient, args: argparse.Namespace) -> Outcome:
    """Print as it comes: the log stays out of the outcome (it may never end)."""
    fid = await resolve(api, args.function)
    if args.follow:
        await _follow(api, fid, args.json)
    elif args.json:
        text = "\n".join([line async for line in api.lines(f"/function/{fid}/logs")])
        print(json.dumps({"id": fid, "containers": split_logs(text)}, indent=2))
    else:
        async for line in api.lines(f"/function/{fid}/logs"):
            _print(line)
    return Outcome({}, "", streamed=True)


async def _follow(api: ApiClient, fid: str, as_json: bool) -> None:
    """Server-Sent Events: one ``log`` event per line, ``{"container_id", "line"}``."""
    async for line in api.lines(f"/function/{fid}/logs", {"follow": "true"}):
        if not line.startswith("data:"):
            continue
        event = json.loads(line[5:])
        if as_json:
            _print(json.dumps(event))
        else:
            _print(f"{event['container_id'][:8]} {event['line']}")


def _print(line: str) -> None:
    print(line, flush=True)


def split_logs(text: str) -> list[dict[str, object]]:
    """The API's plain log text (``==> <cid> (<node>) <==`` headers) as one entry per container."""
    found: list[dict[str, object]] = []
    for line in text.splitlines():
        if line.startswith("==> ") and line.endswith(" <=="):
            cid, _, node = line[4:-4].partition(" ")
            found.append({"container_id": cid, "node": node.strip("()"), "lines": []})
        elif found:
            lines = found[-1]["lines"]
            assert isinstance(lines, list)
            lines.append(line)
    return found


async def secret_set(api: ApiClient, args: argparse.Namespace) -> Outcome:
    """Through the API, which seals the value with the fleet's cluster key."""
    value = read_secret_value(args)
    fid = await resolve(api, args.function)
    existed = args.name in (await api.call("GET", f"/function/{fid}/secrets"))["secrets"]
    await api.call("PUT", f"/function/{fid}/secrets/{args.name}", data=value)
    doc = {"function": fid, "secret": args.name, "created": not existed}
    what = "replaced" if existed else "created"
    return Outcome(doc, f"secret {args.name!r} of function {fid} {what}")


# --- arguments ---------------------------------------------------------------------------


def _function_ref(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "function", metavar="ID|HOST", help="the function's id, or a hostname it answers"
    )


def _wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=seconds,
        help="wait until every replica runs; exit 1 if they do not within SECONDS",
    )


def _tenant(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant", metavar="TENANT", help="admin tokens: act for this tenant (id or name)"
    )


def _file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        help="the definition: .json, .yaml/.yml or .toml (- or another name: YAML, stdin for -)",
    )


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    _file(parser)
    _tenant(parser)
    _wait(parser)


def _update_arguments(parser: argparse.ArgumentParser) -> None:
    _function_ref(parser)
    _file(parser)
    _wait(parser)


def _redeploy_arguments(parser: argparse.ArgumentParser) -> None:
    _function_ref(parser)
    _wait(parser)


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    _function_ref(parser)
    parser.add_argument(
        "-f", "--follow", action="store_true", help="stream new lines as they are written"
    )


SECRET_SET = ApiCommand(
    "set", "set a secret through the API", secret_set, arguments=secret_set_arguments
)

COMMANDS: Sequence[ApiCommand] = (
    ApiCommand(
        "create",
        "create a function from a definition file (JSON, YAML or TOML; units like 128Mi, 500m)",
        function_create,
        arguments=_create_arguments,
    ),
    ApiCommand("list", "list functions with replicas and status", function_list, arguments=_tenant),
    ApiCommand(
        "get",
        "show a function: definition, replicas, their status and node",
        function_get,
        arguments=_function_ref,
    ),
    ApiCommand(
        "update",
        "replace a function's definition from FILE (new replicas first, no gap)",
        function_update,
        arguments=_update_arguments,
    ),
    ApiCommand(
        "redeploy",
        "start new replicas of a function and retire the old ones once they run",
        function_redeploy,
        arguments=_redeploy_arguments,
    ),
    ApiCommand(
        "delete", "delete a function with its replicas", function_delete, arguments=_function_ref
    ),
    ApiCommand(
        "logs",
        "print a function's container output (-f: follow it)",
        function_logs,
        arguments=_logs_arguments,
    ),
)
