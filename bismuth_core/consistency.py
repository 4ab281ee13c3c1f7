"""Consistency check of an environment's ZooKeeper tree, and its repair.

:func:`check` scans the tree for damage that the guarded multi-ops of
:mod:`bismuth_core.operations` never leave behind, but a crash, a bug or a hand edit can:

``orphan-container``
    a container znode whose function does not exist or lists it in neither its backends nor
    its retiring set. Fix: delete its status and the container znode in one multi-op.
``backend-without-container``
    a backend a function lists (in ``backends`` or ``retiring``) without a container znode.
    Fix: remove it from both lists, guarded by their versions.
``route-to-missing-function``
    a route whose function does not exist, or whose definition does not list that hostname.
    Fix: delete the route, guarded by its version (and the function's, if it exists).
``missing-route``
    a function lists a hostname that has no route. Fix: create the route, guarded by the
    function's version.
``reservation-drift``
    a node's reservation (data of ``/node/<ip>/container``) differs from the sum of what
    its containers reserve. Fix: rewrite it from the containers, guarded by its version.
``orphan-rollout``
    a ``/rollout/<fid>`` of a function that does not exist. Fix: delete it.
``orphan-secrets``
    a ``/secret/<fid>`` (sealed secrets) of a function that does not exist. Fix: delete it
    and its children in one multi-op. Secrets of existing functions are never findings.
``undecodable``
    a znode whose data cannot be decoded. Fix: undecodable container and route znodes are
    deleted; undecodable function, backends and node znodes are only reported.

The scan reads the tree piece by piece, not as one snapshot, so every candidate is
confirmed by fresh reads before it is reported, and again right before it is repaired: a
finding that no longer holds (a function created meanwhile) is skipped. Each repair is
planned from those fresh reads as one guarded multi-op and retried on a lost race.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from . import jsondoc, layout
from .cluster import STORED_LIMITS, read_node
from .definition import parse_definition
from .errors import InvalidRequest
from .layout import Backend, ContainerRecord, Reservation
from .operations import remove_containers_ops, retry_races, secret_removal_ops
from .zk import Op, ZooKeeper, create, delete, set_data
from .zk import check as check_op

log = logging.getLogger(__name__)

MAX_PASSES = 3


class Kind(StrEnum):
    ORPHAN_CONTAINER = "orphan-container"
    BACKEND_WITHOUT_CONTAINER = "backend-without-container"
    ROUTE_TO_MISSING_FUNCTION = "route-to-missing-function"
    MISSING_ROUTE = "missing-route"
    RESERVATION_DRIFT = "reservation-drift"
    ORPHAN_ROLLOUT = "orphan-rollout"
    ORPHAN_SECRETS = "orphan-secrets"
    UNDECODABLE = "undecodable"


@dataclass(frozen=True)
class Finding:
    """One inconsistency: its kind, the znode it concerns (chroot-relative) and why.

    ``function_id``, ``backend`` and ``hostname`` name the subject for the repair; which of
    them are set depends on the kind.
    """

    kind: Kind
    path: str
    detail: str
    function_id: uuid.UUID | None = None
    backend: Backend | None = None
    hostname: str | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"kind": str(self.kind), "path": self.path, "detail": self.detail}
        if self.function_id is not None:
            doc["function_id"] = str(self.function_id)
        if self.backend is not None:
            doc["backend"] = self.backend.to_json()
        if self.hostname is not None:
            doc["hostname"] = self.hostname
        return doc


@dataclass(frozen=True)
class Report:
    """What a check-and-repair run found first, repaired, and still finds at the end."""

    found: tuple[Finding, ...]
    repaired: tuple[Finding, ...]
    remaining: tuple[Finding, ...]


# --- fresh reads of single subjects ----------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    """A packed backend list znode; ``backends`` None if its data cannot be decoded."""

    backends: tuple[Backend, ...] | None
    version: int


@dataclass(frozen=True)
class _FunctionState:
    """A function's znodes as read now; ``None`` fields are missing or undecodable."""

    id: uuid.UUID
    version: int | None  # None: no function znode
    hostnames: frozenset[str] | None  # None: definition missing or undecodable
    backends: _Listed | None
    retiring: _Listed | None

    @property
    def exists(self) -> bool:
        return self.version is not None

    def lists(self) -> set[Backend] | None:
        """Backends the function lists (active and retiring); None if that is unknowable."""
        groups = [g for g in (self.backends, self.retiring) if g is not None]
        if any(g.backends is None for g in groups):
            return None
        return {b for g in groups for b in g.backends or ()}


async def _read_listed(zk: ZooKeeper, path: str) -> _Listed | None:
    got = await zk.get_or_none(path)
    if got is None:
        return None
    try:
        return _Listed(layout.unpack_backends(got[0]), got[1].version)
    except ValueError:
        return _Listed(None, got[1].version)


def _hostnames(data: bytes) -> frozenset[str] | None:
    try:
        stored = jsondoc.loads(data, "stored definition")
        return frozenset(parse_definition(stored, STORED_LIMITS).routes)
    except (ValueError, InvalidRequest):
        return None


async def _read_function(zk: ZooKeeper, fid: uuid.UUID) -> _FunctionState:
    got, backends, retiring = await asyncio.gather(
        zk.get_or_none(layout.function_path(fid)),
        _read_listed(zk, layout.backends_path(fid)),
        _read_listed(zk, layout.retiring_path(fid)),
    )
    if got is None:
        return _FunctionState(fid, None, None, backends, retiring)
    return _FunctionState(fid, got[1].version, _hostnames(got[0]), backends, retiring)


@dataclass(frozen=True)
class _ContainerState:
    backend: Backend
    version: int
    function_id: uuid.UUID | None  # None: data cannot be decoded


async def _read_container(zk: ZooKeeper, backend: Backend) -> _ContainerState | None:
    got = await zk.get_or_none(layout.container_path(backend.ip, backend.container_id))
    if got is None:
        return None
    try:
        fid: uuid.UUID | None = ContainerRecord.decode(got[0]).function_id
    except ValueError:
        fid = None
    return _ContainerState(backend, got[1].version, fid)


# --- scan ------------------------------------------------------------------------------


async def _node_backends(zk: ZooKeeper, ip: str) -> list[Backend]:
    names = await zk.children(layout.containers_path(ip))
    return [Backend(ip, cid) for cid in map(layout.parse_uuid, names) if cid is not None]


async def _scan_containers(zk: ZooKeeper) -> list[_ContainerState]:
    ips = [ip for ip in map(layout.parse_ipv4, await zk.children(layout.NODES)) if ip]
    per_node = await asyncio.gather(*(_node_backends(zk, ip) for ip in ips))
    states = await asyncio.gather(*(_read_container(zk, b) for bs in per_node for b in bs))
    return [s for s in states if s is not None]


async def _scan_nodes(zk: ZooKeeper) -> list[Finding]:
    ips = [ip for ip in map(layout.parse_ipv4, await zk.children(layout.NODES)) if ip]
    return [f for f in await asyncio.gather(*(_node_finding(zk, ip) for ip in ips)) if f]


async def _node_finding(zk: ZooKeeper, ip: str) -> Finding | None:
    got = await zk.get_or_none(layout.node_path(ip))
    if got is None or got[0] in (layout.encode_enabled(True), layout.encode_enabled(False)):
        return None
    return Finding(
        Kind.UNDECODABLE, layout.node_path(ip), f"node data {got[0][:16]!r} is not 0 or 1"
    )


def _container_findings(
    containers: Iterable[_ContainerState], functions: dict[uuid.UUID, _FunctionState]
) -> list[Finding]:
    findings = []
    for c in containers:
        path = layout.container_path(c.backend.ip, c.backend.container_id)
        if c.function_id is None:
            findings.append(
                Finding(
                    Kind.UNDECODABLE,
                    path,
                    "container data is not a function UUID",
                    backend=c.backend,
                )
            )
            continue
        fn = functions.get(c.function_id)
        listed = fn.lists() if fn is not None and fn.exists else set()
        if listed is not None and c.backend not in listed:
            findings.append(_orphan(c, fn))
    return findings


def _orphan(c: _ContainerState, fn: _FunctionState | None) -> Finding:
    path = layout.container_path(c.backend.ip, c.backend.container_id)
    why = (
        f"function {c.function_id} does not exist"
        if fn is None or not fn.exists
        else f"function {c.function_id} does not list it as a backend"
    )
    return Finding(Kind.ORPHAN_CONTAINER, path, why, c.function_id, c.backend)


def _function_findings(
    fn: _FunctionState, containers: set[Backend], routes: dict[str, uuid.UUID | None]
) -> list[Finding]:
    findings = _undecodable_function(fn)
    if not fn.exists:
        return findings
    for b in sorted(fn.lists() or ()):
        if b not in containers:
            findings.append(_backend_without_container(fn.id, b))
    for host in sorted(fn.hostnames or ()):
        if host not in routes:
            findings.append(
                Finding(
                    Kind.MISSING_ROUTE,
                    layout.route_path(host),
                    f"function {fn.id} lists hostname {host!r} but it has no route",
                    fn.id,
                    hostname=host,
                )
            )
    return findings


def _backend_without_container(fid: uuid.UUID, b: Backend) -> Finding:
    return Finding(
        Kind.BACKEND_WITHOUT_CONTAINER,
        layout.backends_path(fid),
        f"lists backend {b.ip}/{b.container_id} but "
        f"{layout.container_path(b.ip, b.container_id)} does not exist",
        fid,
        b,
    )


def _undecodable_function(fn: _FunctionState) -> list[Finding]:
    findings = []
    if fn.exists and fn.hostnames is None:
        findings.append(
            Finding(
                Kind.UNDECODABLE,
                layout.function_path(fn.id),
                "function definition is not a valid definition",
                fn.id,
            )
        )
    for listed, path in (
        (fn.backends, layout.backends_path(fn.id)),
        (fn.retiring, layout.retiring_path(fn.id)),
    ):
        if listed is not None and listed.backends is None:
            findings.append(
                Finding(Kind.UNDECODABLE, path, "packed backends cannot be decoded", fn.id)
            )
    return findings


def _route_findings(
    routes: dict[str, uuid.UUID | None], functions: dict[uuid.UUID, _FunctionState]
) -> list[Finding]:
    findings = []
    for host, fid in sorted(routes.items()):
        path = layout.route_path(host)
        if fid is None:
            findings.append(
                Finding(Kind.UNDECODABLE, path, "route data is not a function UUID", hostname=host)
            )
            continue
        why = _route_problem(host, fid, functions.get(fid))
        if why:
            findings.append(Finding(Kind.ROUTE_TO_MISSING_FUNCTION, path, why, fid, hostname=host))
    return findings


def _route_problem(host: str, fid: uuid.UUID, fn: _FunctionState | None) -> str | None:
    if fn is None or not fn.exists:
        return f"routes to function {fid}, which does not exist"
    if fn.hostnames is not None and host not in fn.hostnames:
        return f"routes to function {fid}, whose definition does not list {host!r}"
    return None


async def _read_routes(zk: ZooKeeper) -> dict[str, uuid.UUID | None]:
    names = await zk.children(layout.ROUTES)
    raws = await asyncio.gather(*(zk.get_or_none(layout.route_path(n)) for n in names))
    return {n: layout.decode_route(r[0]) for n, r in zip(names, raws, strict=True) if r}


async def _scan(zk: ZooKeeper) -> list[Finding]:
    """Candidates from piecewise reads; containers are read before the functions."""
    containers = await _scan_containers(zk)
    fids = [f for f in map(layout.parse_uuid, await zk.children(layout.FUNCTIONS)) if f]
    known = {c.function_id for c in containers if c.function_id is not None}
    states = await asyncio.gather(*(_read_function(zk, f) for f in sorted(set(fids) | known)))
    functions = {s.id: s for s in states}
    routes = await _read_routes(zk)
    present = {c.backend for c in containers}
    return [
        *await _scan_nodes(zk),
        *await _scan_reservations(zk),
        *await _scan_rollouts(zk),
        *await _scan_secrets(zk),
        *_container_findings(containers, functions),
        *(f for s in states for f in _function_findings(s, present, routes)),
        *_route_findings(routes, functions),
    ]


async def _reservation_finding(zk: ZooKeeper, ip: str) -> Finding | None:
    node = await read_node(zk, ip)
    if node is None or node.containers_version is None:
        return None
    held = _held(node.containers.values())
    if held is None or _same(held, node.reserved):
        return None
    return Finding(
        Kind.RESERVATION_DRIFT,
        layout.containers_path(ip),
        f"reserves cpu {node.reserved.cpu:g}, memory {node.reserved.memory}, "
        f"{node.reserved.containers} container(s), but its containers hold cpu {held.cpu:g}, "
        f"memory {held.memory}, {held.containers} container(s)",
    )


def _held(containers: Iterable[object]) -> Reservation | None:
    """What the containers reserve together; None if one cannot be decoded."""
    total = Reservation()
    for c in containers:
        record = getattr(c, "record", None)
        if record is None:
            return None
        total = total.plus(record.cpu, record.memory, 1)
    return total


def _same(a: Reservation, b: Reservation) -> bool:
    return abs(a.cpu - b.cpu) < 1e-6 and a.memory == b.memory and a.containers == b.containers


async def _scan_reservations(zk: ZooKeeper) -> list[Finding]:
    ips = [ip for ip in map(layout.parse_ipv4, await zk.children(layout.NODES)) if ip]
    found = await asyncio.gather(*(_reservation_finding(zk, ip) for ip in ips))
    return [f for f in found if f]


async def _scan_rollouts(zk: ZooKeeper) -> list[Finding]:
    findings = []
    for fid in [f for f in map(layout.parse_uuid, await zk.children(layout.ROLLOUTS)) if f]:
        if await zk.exists(layout.function_path(fid)) is None:
            findings.append(
                Finding(
                    Kind.ORPHAN_ROLLOUT,
                    layout.retiring_path(fid),
                    f"function {fid} does not exist",
                    function_id=fid,
                )
            )
    return findings


async def _plan_reservation(zk: ZooKeeper, ip: str) -> list[Op] | None:
    node = await read_node(zk, ip)
    if node is None or node.containers_version is None:
        return None
    held = _held(node.containers.values())
    if held is None or _same(held, node.reserved):
        return None
    return [set_data(layout.containers_path(ip), held.encode(), node.containers_version)]


async def _scan_secrets(zk: ZooKeeper) -> list[Finding]:
    fids = [f for f in map(layout.parse_uuid, await zk.children(layout.SECRETS)) if f]
    stats = await asyncio.gather(*(zk.exists(layout.function_path(f)) for f in fids))
    return [
        Finding(
            Kind.ORPHAN_SECRETS,
            layout.secrets_path(fid),
            f"secrets of function {fid}, which does not exist",
            function_id=fid,
        )
        for fid, stat in zip(fids, stats, strict=True)
        if stat is None
    ]


async def _plan_secrets(zk: ZooKeeper, fid: uuid.UUID) -> list[Op] | None:
    if await zk.exists(layout.function_path(fid)) is not None:
        return None
    return await secret_removal_ops(zk, fid) or None


async def _plan_rollout(zk: ZooKeeper, fid: uuid.UUID) -> list[Op] | None:
    got = await zk.get_or_none(layout.retiring_path(fid))
    if got is None or await zk.exists(layout.function_path(fid)) is not None:
        return None
    return [delete(layout.retiring_path(fid), got[1].version)]


# --- confirmation and repair plans ----------------------------------------------------


async def _plan(zk: ZooKeeper, finding: Finding) -> list[Op] | None:
    """The multi-op repairing ``finding``, from fresh reads; None if it no longer holds.

    An empty plan: the finding holds but is only reported (nothing safe to do).
    """
    kind, backend, host = finding.kind, finding.backend, finding.hostname
    if kind in (Kind.ORPHAN_CONTAINER, Kind.UNDECODABLE) and backend is not None:
        return await _plan_container(zk, finding, backend)
    if kind == Kind.BACKEND_WITHOUT_CONTAINER and backend and finding.function_id:
        return await _plan_backend(zk, finding.function_id, backend)
    if kind in (Kind.ROUTE_TO_MISSING_FUNCTION, Kind.UNDECODABLE) and host is not None:
        return await _plan_route(zk, finding, host)
    if kind == Kind.MISSING_ROUTE and host is not None and finding.function_id:
        return await _plan_missing_route(zk, finding.function_id, host)
    if kind == Kind.RESERVATION_DRIFT:
        return await _plan_reservation(zk, finding.path.split("/")[2])
    if kind == Kind.ORPHAN_ROLLOUT and finding.function_id:
        return await _plan_rollout(zk, finding.function_id)
    if kind == Kind.ORPHAN_SECRETS and finding.function_id:
        return await _plan_secrets(zk, finding.function_id)
    return await _still_undecodable(zk, finding)


async def _plan_container(zk: ZooKeeper, finding: Finding, b: Backend) -> list[Op] | None:
    state = await _read_container(zk, b)
    if state is None:
        return None
    if finding.kind == Kind.UNDECODABLE:
        guard: list[Op] | None = [] if state.function_id is None else None
    else:
        guard = await _orphan_guard(zk, state)
    if guard is None:
        return None
    return [*guard, *await remove_containers_ops(zk, [b])]


async def _orphan_guard(zk: ZooKeeper, state: _ContainerState) -> list[Op] | None:
    """Checks that keep the container an orphan until the commit; None if it is not one."""
    if state.function_id is None:
        return None
    fn = await _read_function(zk, state.function_id)
    if fn.version is None:
        return []
    listed = fn.lists()
    if listed is None or state.backend in listed:
        return None
    guard = [check_op(layout.function_path(fn.id), fn.version)]
    if fn.backends is not None:
        guard.append(check_op(layout.backends_path(fn.id), fn.backends.version))
    return guard


async def _plan_backend(zk: ZooKeeper, fid: uuid.UUID, b: Backend) -> list[Op] | None:
    fn = await _read_function(zk, fid)
    listed = fn.lists() if fn.exists else None
    if not listed or b not in listed or await _read_container(zk, b) is not None:
        return None
    ops: list[Op] = []
    for group, path in (
        (fn.backends, layout.backends_path(fid)),
        (fn.retiring, layout.retiring_path(fid)),
    ):
        if group is None or b not in (group.backends or ()):
            continue
        kept = [x for x in group.backends or () if x != b]
        if path == layout.retiring_path(fid) and not kept:
            ops.append(delete(path, group.version))
        else:
            ops.append(set_data(path, layout.pack_backends(kept), group.version))
    return ops


async def _plan_route(zk: ZooKeeper, finding: Finding, host: str) -> list[Op] | None:
    got = await zk.get_or_none(layout.route_path(host))
    if got is None:
        return None
    fid = layout.decode_route(got[0])
    drop = [delete(layout.route_path(host), got[1].version)]
    if finding.kind == Kind.UNDECODABLE:
        return drop if fid is None else None
    if fid is None:
        return None
    fn = await _read_function(zk, fid)
    if _route_problem(host, fid, fn) is None:
        return None
    return [
        *drop,
        *([check_op(layout.function_path(fid), fn.version)] if fn.version is not None else []),
    ]


async def _plan_missing_route(zk: ZooKeeper, fid: uuid.UUID, host: str) -> list[Op] | None:
    fn = await _read_function(zk, fid)
    if fn.version is None or host not in (fn.hostnames or ()):
        return None
    if await zk.exists(layout.route_path(host)) is not None:
        return None
    return [
        check_op(layout.function_path(fid), fn.version),
        create(layout.route_path(host), layout.encode_route(fid)),
    ]


async def _still_undecodable(zk: ZooKeeper, finding: Finding) -> list[Op] | None:
    """Report-only findings (function, backends, node data): [] while they still hold."""
    fresh = [f for f in await _scan_subject(zk, finding) if f.path == finding.path]
    return [] if any(f.kind == finding.kind for f in fresh) else None


async def _scan_subject(zk: ZooKeeper, finding: Finding) -> list[Finding]:
    if finding.function_id is not None:
        return _undecodable_function(await _read_function(zk, finding.function_id))
    return await _scan_nodes(zk)


# --- public API -----------------------------------------------------------------------

_ORDER = list(Kind)


async def check(zk: ZooKeeper) -> list[Finding]:
    """Every inconsistency in the tree, each confirmed by fresh reads, in a stable order."""
    candidates = await _scan(zk)
    plans = await asyncio.gather(*(_plan(zk, f) for f in candidates))
    confirmed = {f for f, plan in zip(candidates, plans, strict=True) if plan is not None}
    return sorted(confirmed, key=lambda f: (_ORDER.index(f.kind), f.path, f.detail))


async def repair(zk: ZooKeeper, findings: Iterable[Finding]) -> list[Finding]:
    """Repair what can be repaired; return the findings that were.

    Findings that no longer hold are skipped; report-only ones are left as they are.
    """
    repaired = []
    for finding in findings:
        if await _repair_one(zk, finding):
            repaired.append(finding)
    return repaired


async def _repair_one(zk: ZooKeeper, finding: Finding) -> bool:
    async def attempt() -> bool:
        ops = await _plan(zk, finding)
        if not ops:
            return False
        await zk.commit(ops)
        return True

    done = await retry_races(attempt, f"repair {finding.kind} at {finding.path}")
    if done:
        log.info("repaired %s", finding.kind, extra={"path": finding.path})
    return done


async def check_and_repair(zk: ZooKeeper, max_passes: int = MAX_PASSES) -> Report:
    """Check and repair until clean, or nothing more can be repaired, or ``max_passes``.

    One repair can reveal another (deleting an undecodable container a function lists
    leaves that backend without a container), hence several passes.
    """
    found = await check(zk)
    current, repaired = found, []
    for _ in range(max_passes):
        done = await repair(zk, current)
        repaired += done
        current = await check(zk)
        if not done or not current:
            break
    return Report(tuple(found), tuple(repaired), tuple(current))
