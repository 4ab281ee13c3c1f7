"""One handler per ``bismuthctl`` subcommand: call bismuth_core, describe the result.

Each handler takes a connected :class:`ZooKeeper` and the parsed arguments and returns an
:class:`Outcome`: a JSON document for ``--json``, text for people, and an exit code. Domain
failures are raised as :class:`bismuth_core.errors.BismuthError` and mapped to exit codes
by :mod:`bismuth_ctl.main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bismuth_core import cluster, consistency, layout, operations, tenancy
from bismuth_core.cluster import FunctionView, NodeView
from bismuth_core.consistency import Finding
from bismuth_core.errors import Conflict, InvalidRequest, TooLarge
from bismuth_core.layout import Backend, ContainerStatus
from bismuth_core.secrets import MAX_SECRET_SIZE, validate_secret_name
from bismuth_core.zk import TransactionFailed, ZooKeeper

from .tables import format_bytes, format_cpus, render_table

if TYPE_CHECKING:
    from .apiclient import ApiClient

# Exit codes (documented in bismuth_ctl.main and in --help).
OK = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
CONFLICT = 4
UNAVAILABLE = 5
UNAUTHORIZED = 6

POLL_INTERVAL = 1.0  # drain --wait re-reads at least this often; a watch wakes it sooner


@dataclass(frozen=True)
class Outcome:
    """What a command did: ``document`` for --json, ``text`` for people, the exit code.

    ``error`` (with a non-zero code) is the one-line reason printed to stderr.
    """

    document: Mapping[str, object]
    text: str
    code: int = OK
    error: str | None = None
    streamed: bool = False  # the command printed its output as it came: nothing more to print


Statuses = dict[Backend, ContainerStatus | None]
Handler = Callable[[ZooKeeper, argparse.Namespace], Awaitable[Outcome]]
ApiHandler = Callable[["ApiClient", argparse.Namespace], Awaitable[Outcome]]


@dataclass(frozen=True)
class Command:
    """A subcommand: its handler and whether it needs a bootstrapped environment.

    ``needs_cluster_key``: the parsed arguments carry ``secret_box``, a
    :class:`~bismuth_core.secrets.SecretBox` with the configured cluster key.
    """

    name: str
    help: str
    handler: Handler
    needs_tree: bool = True
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda _p: None)
    needs_cluster_key: bool = False


@dataclass(frozen=True)
class ApiCommand:
    """A subcommand that talks to ``bismuth-api`` over HTTP instead of ZooKeeper."""

    name: str
    help: str
    handler: ApiHandler
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda _p: None)


@dataclass(frozen=True)
class CommandGroup:
    """A subcommand with subcommands of its own (``bismuthctl secret set ...``)."""

    name: str
    help: str
    commands: Sequence[Command | ApiCommand]


# --- cluster set-up and nodes ----------------------------------------------------------


async def bootstrap(zk: ZooKeeper, _args: argparse.Namespace) -> Outcome:
    if zk.access is None:
        raise InvalidRequest(
            "bootstrap needs the cluster key (--cluster-key-file FILE, or "
            "/etc/bismuth/cluster.key): the tree it makes gets the cluster's ZooKeeper ACLs"
        )
    tree = await operations.bootstrap(zk)
    changed = await tenancy.bootstrap(zk) or tree
    text = (
        f"environment {zk.env!r}: created the cluster tree"
        if changed
        else f"environment {zk.env!r} is already bootstrapped; nothing changed"
    )
    return Outcome({"environment": zk.env, "changed": changed}, text)


async def provision(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    created = await operations.provision(zk, args.ip)
    text = (
        f"node {args.ip} provisioned and enabled for scheduling"
        if created
        else f"node {args.ip} is already provisioned; nothing changed"
    )
    return Outcome({"node": args.ip, "changed": created}, text)


async def deprovision(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    try:
        await operations.deprovision(zk, args.ip)
    except TransactionFailed as exc:
        raise Conflict(f"node {args.ip} changed while being removed; try again") from exc
    return Outcome({"node": args.ip, "changed": True}, f"node {args.ip} deprovisioned")


async def undrain(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    await operations.set_enabled(zk, args.ip, True)
    return Outcome({"node": args.ip, "enabled": True}, f"node {args.ip} enabled for scheduling")


async def drain(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    moved, problems = await operations.drain(zk, args.ip)
    doc: dict[str, object] = {
        "node": args.ip,
        "enabled": False,
        "replacements": [b.to_json() for b in moved],
        "problems": problems,
    }
    lines = [f"node {args.ip} disabled for scheduling"]
    lines += _drain_lines(moved, problems)
    if problems:
        error = f"could not move {len(problems)} container(s) off node {args.ip}"
        return Outcome(doc, "\n".join(lines), FAILED, error)
    if args.wait is None:
        if moved:
            lines.append(
                "the drained containers keep serving until their replacements run; "
                "the API's leader then removes them"
            )
        return Outcome(doc, "\n".join(lines))
    remaining = await wait_until_empty(zk, args.ip, args.wait)
    doc["remaining"] = remaining
    if remaining:
        error = f"timed out after {args.wait:g}s: node {args.ip} still has {remaining} container(s)"
        return Outcome(doc, "\n".join(lines), FAILED, error)
    lines.append(f"node {args.ip} has no containers left")
    return Outcome(doc, "\n".join(lines))


def _drain_lines(moved: list[Backend], problems: list[str]) -> list[str]:
    lines = []
    if not moved and not problems:
        lines.append("no container needed a replacement")
    if moved:
        lines.append(f"started {len(moved)} replacement(s):")
        table = render_table(["node", "container"], [(b.ip, b.container_id) for b in moved])
        lines += ["  " + line for line in table.splitlines()]
    if problems:
        lines.append("could not move:")
        lines += ["  " + p for p in problems]
    return lines


async def wait_until_empty(zk: ZooKeeper, ip: str, timeout: float) -> int:
    """Wait up to ``timeout`` seconds for node ``ip`` to have no containers; how many remain.

    A children watch wakes the wait on every change; it also re-reads at least every
    ``POLL_INTERVAL`` seconds, so a missed wake-up only delays it.
    """
    changed = asyncio.Event()
    unwatch = await zk.watch_children(layout.containers_path(ip), changed.set)
    deadline = time.monotonic() + timeout
    try:
        while True:
            node = await cluster.read_node(zk, ip)
            remaining = len(node.containers) if node else 0
            left = deadline - time.monotonic()
            if not remaining or left <= 0:
                return remaining
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, POLL_INTERVAL))
    finally:
        unwatch()


# --- listings --------------------------------------------------------------------------


async def nodes(zk: ZooKeeper, _args: argparse.Namespace) -> Outcome:
    views = sorted((await cluster.read_nodes(zk)).values(), key=_ip_order)
    rows = [_node_row(v) for v in views]
    table = render_table(
        ["ip", "enabled", "alive", "version", "cpus", "memory", "reserved", "containers", "pool"],
        rows,
    )
    text = table if views else "no nodes provisioned"
    return Outcome({"nodes": [v.to_json() for v in views]}, text)


def _ip_order(view: NodeView) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(view.ip)


def _node_row(view: NodeView) -> list[object]:
    cap = view.capacity()
    reserved = f"{format_cpus(cap.reserved_cpu)} cpu, {format_bytes(cap.reserved_memory)}"
    return [
        view.ip,
        view.enabled,
        view.alive is not None,
        view.alive.version if view.alive else None,
        format_cpus(cap.cpus) if view.alive else None,
        format_bytes(cap.memory) if view.alive else None,
        reserved,
        len(view.containers),
        (view.alive.pool or None) if view.alive else None,
    ]


async def functions(zk: ZooKeeper, _args: argparse.Namespace) -> Outcome:
    views = await cluster.read_functions(zk)
    statuses = await cluster.read_statuses(zk, [b for v in views for b in v.backends])
    rows = [row for v in views for row in _function_rows(v, statuses)]
    table = render_table(["id", "routes", "max", "node", "container", "status"], rows)
    document = {"functions": [_function_json(v, statuses) for v in views]}
    return Outcome(document, table if views else "no functions")


def _function_json(view: FunctionView, statuses: Statuses) -> dict[str, object]:
    return {
        "id": str(view.id),
        "routes": list(view.definition.routes),
        "max_instances": view.definition.max_instances,
        "backends": [
            {
                "backend": b.to_json(),
                "status": cluster.status_label(statuses.get(b)),
                "retiring": b in view.retiring,
            }
            for b in view.backends
        ],
    }


def _function_rows(view: FunctionView, statuses: Statuses) -> list[list[object]]:
    head: list[object] = [
        view.id,
        ",".join(view.definition.routes) or None,
        view.definition.max_instances,
    ]
    if not view.backends:
        return [[*head, None, None, None]]
    rows = []
    for i, b in enumerate(view.backends):
        status = cluster.status_label(statuses.get(b))
        if b in view.retiring:
            status += " (retiring)"
        rows.append([*(head if i == 0 else ["", "", ""]), b.ip, b.container_id, status])
    return rows


# --- consistency -----------------------------------------------------------------------


async def check_consistency(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    if args.fix:
        report = await consistency.check_and_repair(zk)
        return _repair_outcome(zk, report)
    findings = await consistency.check(zk)
    doc = {"environment": zk.env, "findings": [f.to_json() for f in findings]}
    if not findings:
        return Outcome(doc, f"environment {zk.env!r} is consistent")
    text = f"{len(findings)} finding(s):\n{_findings_table(findings)}"
    error = f"found {_inconsistencies(len(findings))}; run 'bismuthctl consistency --fix' to repair"
    return Outcome(doc, text, FAILED, error)


def _repair_outcome(zk: ZooKeeper, report: consistency.Report) -> Outcome:
    doc = {
        "environment": zk.env,
        "findings": [f.to_json() for f in report.found],
        "repaired": [f.to_json() for f in report.repaired],
        "remaining": [f.to_json() for f in report.remaining],
    }
    lines = []
    if report.repaired:
        lines += [f"repaired {len(report.repaired)}:", _findings_table(report.repaired)]
    if report.remaining:
        lines += [f"not repaired {len(report.remaining)}:", _findings_table(report.remaining)]
        error = f"{_inconsistencies(len(report.remaining))} could not be repaired"
        return Outcome(doc, "\n".join(lines), FAILED, error)
    lines.append(f"environment {zk.env!r} is consistent")
    return Outcome(doc, "\n".join(lines))


def _inconsistencies(count: int) -> str:
    return f"{count} inconsistenc{'y' if count == 1 else 'ies'}"


def _findings_table(findings: tuple[Finding, ...] | list[Finding]) -> str:
    return render_table(["kind", "path", "detail"], [(f.kind, f.path, f.detail) for f in findings])


# --- secrets ---------------------------------------------------------------------------


async def secret_set(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    """Sealed here with the cluster key and written to ZooKeeper (no API involved)."""
    fid = layout.parse_uuid(args.function)
    if fid is None:
        raise InvalidRequest(
            f"{args.function!r} is not a function id (a UUID): with a cluster key, "
            "name the function by its id"
        )
    value = read_secret_value(args)
    sealed = args.secret_box.seal(fid, args.name, value)
    created = await operations.set_secret(zk, fid, args.name, sealed)
    doc = {"function": str(fid), "secret": args.name, "created": created}
    what = "created" if created else "replaced"
    return Outcome(doc, f"secret {args.name!r} of function {fid} {what}")


def read_secret_value(args: argparse.Namespace) -> bytes:
    """The value from ``--value``, ``--from-file`` or stdin; at most ``MAX_SECRET_SIZE`` bytes."""
    if args.value is not None:
        value, source = args.value.encode("utf-8"), "--value"
    elif args.from_file is not None:
        try:
            with open(args.from_file, "rb") as fh:
                value = fh.read(MAX_SECRET_SIZE + 1)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {args.from_file}: {exc.strerror or exc}") from exc
        source = args.from_file
    else:
        value, source = sys.stdin.buffer.read(MAX_SECRET_SIZE + 1), "stdin"
    if len(value) > MAX_SECRET_SIZE:
        raise TooLarge(f"secret value from {source} is over the limit of {MAX_SECRET_SIZE} bytes")
    return value


async def secret_list(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    names = await operations.secret_names(zk, args.function)
    text = "\n".join(names) if names else f"function {args.function} has no secrets"
    return Outcome({"function": str(args.function), "secrets": names}, text)


async def secret_delete(zk: ZooKeeper, args: argparse.Namespace) -> Outcome:
    await operations.delete_secret(zk, args.function, args.name)
    doc = {"function": str(args.function), "secret": args.name, "deleted": True}
    return Outcome(doc, f"secret {args.name!r} of function {args.function} deleted")


def function_id(text: str) -> uuid.UUID:
    """argparse type: a function's UUID."""
    fid = layout.parse_uuid(text)
    if fid is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a function id (a UUID)")
    return fid


def secret_name(text: str) -> str:
    """argparse type: a valid secret name."""
    try:
        return validate_secret_name(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _function_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("function", metavar="FID", type=function_id, help="the function's id")


def _secret_arguments(parser: argparse.ArgumentParser) -> None:
    _function_argument(parser)
    parser.add_argument("name", metavar="NAME", type=secret_name, help="the secret's name")


def secret_set_arguments(parser: argparse.ArgumentParser) -> None:
    """``secret set``: through the API a function's id or hostname; with a key, its id."""
    parser.add_argument(
        "function",
        metavar="ID|HOST",
        help="the function's id (through the API also a hostname it answers)",
    )
    parser.add_argument("name", metavar="NAME", type=secret_name, help="the secret's name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--value", metavar="V", help="the value (visible to other local users in ps: prefer a file)"
    )
    source.add_argument("--from-file", metavar="F", help="read the value from file F")


def _ip_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ip", metavar="IP", type=ipv4, help="the node's IPv4 address")


def ipv4(text: str) -> str:
    """argparse type: a node's IPv4 address, canonical."""
    ip = layout.parse_ipv4(text)
    if ip is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address")
    return ip


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _wait_argument(help_text: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--wait", metavar="SECONDS", type=seconds, help=help_text)

    return add


def _drain_arguments(parser: argparse.ArgumentParser) -> None:
    _ip_argument(parser)
    _wait_argument(
        "wait until the node has no containers left (the API's leader removes them once "
        "their replacements run); exit 1 if it still has some after SECONDS"
    )(parser)


def _consistency_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fix", action="store_true", help="repair what was found")


COMMANDS = (
    Command(
        "bootstrap",
        "create the environment's ZooKeeper tree (idempotent)",
        bootstrap,
        needs_tree=False,
        arguments=_wait_argument(
            "wait up to SECONDS for ZooKeeper to come up (default: --timeout)"
        ),
    ),
    Command(
        "provision", "register a node, enabled for scheduling", provision, arguments=_ip_argument
    ),
    Command(
        "deprovision",
        "remove a node that has no containers and no live agent",
        deprovision,
        arguments=_ip_argument,
    ),
    Command(
        "drain",
        "disable a node and start its containers elsewhere",
        drain,
        arguments=_drain_arguments,
    ),
    Command("undrain", "enable a node for scheduling again", undrain, arguments=_ip_argument),
    Command("nodes", "list nodes", nodes),
    Command("functions", "list functions and their backends", functions),
    Command(
        "consistency",
        "check the tree for inconsistencies (and --fix them)",
        check_consistency,
        arguments=_consistency_arguments,
    ),
    CommandGroup(
        "secret",
        "set, list (names only) and delete a function's secrets",
        (
            Command(
                "set",
                "set a secret from --value, --from-file or stdin (at most 64 KiB): through "
                "the API, or with --cluster-key-file sealed here and written to ZooKeeper",
                secret_set,
                arguments=secret_set_arguments,
                needs_cluster_key=True,
            ),
            Command(
                "list", "list a function's secret names", secret_list, arguments=_function_argument
            ),
            Command("delete", "delete a secret", secret_delete, arguments=_secret_arguments),
        ),
    ),
)
