"""One check per kind of damage: where to look, what counts as damage, and the repair.

Each check has one predicate that says whether its subject is damaged and why. The scan
applies it to the piecewise read of the tree (:class:`.reads.Tree`) to find candidates;
:meth:`Check.plan` applies it again to fresh reads of the one subject and, if it still
holds, returns the guarded multi-op that repairs it (``[]``: report only), or ``None``
when it no longer holds. So what is reported and what is repaired never disagree.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

from .. import layout
from ..cluster import NodeView, read_node
from ..layout import Backend, Reservation
from ..operations import remove_containers_ops, secret_removal_ops
from ..zk import Op, ZooKeeper, create, delete, set_data
from ..zk import check as check_op
from .findings import Finding, Kind
from .reads import (
    ContainerState,
    FunctionState,
    Listed,
    Tree,
    child_ids,
    function_exists,
    read_container,
    read_function,
    read_route,
)


class Check(Protocol):
    def owns(self, finding: Finding) -> bool:
        """Whether ``finding`` is one of this check's."""

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        """Candidates in the piecewise read."""

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        """The repair, from fresh reads; ``[]`` report only; None if it no longer holds."""


# --- containers ----------------------------------------------------------------------------


def container_problem(c: ContainerState, fn: FunctionState | None) -> tuple[Kind, str] | None:
    """Why a container znode is damage: undecodable, or no function lists it."""
    if c.function_id is None:
        return Kind.UNDECODABLE, "container data is not a function UUID"
    if fn is None or not fn.exists:
        return Kind.ORPHAN_CONTAINER, f"function {c.function_id} does not exist"
    listed = fn.lists()
    if listed is not None and c.backend not in listed:
        return Kind.ORPHAN_CONTAINER, f"function {c.function_id} does not list it as a backend"
    return None  # listed, or unknowable while its lists cannot be decoded


class Containers:
    def owns(self, finding: Finding) -> bool:
        return finding.backend is not None and finding.kind in (
            Kind.ORPHAN_CONTAINER,
            Kind.UNDECODABLE,
        )

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        found = []
        for c in tree.containers:
            fn = tree.functions.get(c.function_id) if c.function_id else None
            problem = container_problem(c, fn)
            if problem is not None:
                found.append(self._finding(c, *problem))
        return found

    @staticmethod
    def _finding(c: ContainerState, kind: Kind, why: str) -> Finding:
        path = layout.container_path(c.backend.ip, c.backend.container_id)
        if kind == Kind.UNDECODABLE:
            return Finding(kind, path, why, backend=c.backend)
        return Finding(kind, path, why, c.function_id, c.backend)

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        assert finding.backend is not None
        c = await read_container(zk, finding.backend)
        if c is None:
            return None
        fn = await read_function(zk, c.function_id) if c.function_id else None
        problem = container_problem(c, fn)
        if problem is None or problem[0] != finding.kind:
            return None
        return [*_unchanged(fn), *await remove_containers_ops(zk, [c.backend])]


def _unchanged_definition(fn: FunctionState | None) -> list[Op]:
    """A check that the function's definition is as judged until the commit (if it exists)."""
    if fn is None or fn.version is None:
        return []
    return [check_op(layout.function_path(fn.id), fn.version)]


def _unchanged(fn: FunctionState | None) -> list[Op]:
    """Checks that the function (and its backends) are as judged until the commit."""
    guard = _unchanged_definition(fn)
    if fn is not None and fn.backends is not None:
        guard.append(check_op(layout.backends_path(fn.id), fn.backends.version))
    return guard


# --- backends ------------------------------------------------------------------------------


def missing_backends(fn: FunctionState, present: set[Backend]) -> list[Backend]:
    """Backends the function lists that have no container znode."""
    return sorted(b for b in (fn.lists() or ()) if b not in present) if fn.exists else []


class Backends:
    def owns(self, finding: Finding) -> bool:
        return finding.kind == Kind.BACKEND_WITHOUT_CONTAINER

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        present = tree.present
        return [
            self._finding(fn.id, b)
            for fn in tree.functions.values()
            for b in missing_backends(fn, present)
        ]

    @staticmethod
    def _finding(fid: uuid.UUID, b: Backend) -> Finding:
        return Finding(
            Kind.BACKEND_WITHOUT_CONTAINER,
            layout.backends_path(fid),
            f"lists backend {b.ip}/{b.container_id} but "
            f"{layout.container_path(b.ip, b.container_id)} does not exist",
            fid,
            b,
        )

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        b, fid = finding.backend, finding.function_id
        assert b is not None and fid is not None
        fn, c = await asyncio.gather(read_function(zk, fid), read_container(zk, b))
        present = set() if c is None else {b}
        if b not in missing_backends(fn, present):
            return None
        ops: list[Op] = []
        for group, path in ((fn.backends, layout.backends_path(fid)), (fn.retiring, None)):
            ops += _without(group, b, path or layout.retiring_path(fid), drop_empty=not path)
        return ops


def _without(group: Listed | None, b: Backend, path: str, drop_empty: bool) -> list[Op]:
    if group is None or b not in (group.backends or ()):
        return []
    kept = [x for x in group.backends or () if x != b]
    if drop_empty and not kept:
        return [delete(path, group.version)]
    return [set_data(path, layout.pack_backends(kept), group.version)]


# --- routes --------------------------------------------------------------------------------


def route_problem(
    host: str, fid: uuid.UUID | None, fn: FunctionState | None
) -> tuple[Kind, str] | None:
    """Why a route is damage: undecodable, or its function is missing or does not list it."""
    if fid is None:
        return Kind.UNDECODABLE, "route data is not a function UUID"
    if fn is None or not fn.exists:
        return Kind.ROUTE_TO_MISSING_FUNCTION, f"routes to function {fid}, which does not exist"
    if fn.hostnames is not None and host not in fn.hostnames:
        return (
            Kind.ROUTE_TO_MISSING_FUNCTION,
            f"routes to function {fid}, whose definition does not list {host!r}",
        )
    return None


class Routes:
    def owns(self, finding: Finding) -> bool:
        return (
            finding.hostname is not None
            and finding.backend is None
            and finding.kind in (Kind.ROUTE_TO_MISSING_FUNCTION, Kind.UNDECODABLE)
        )

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        found = []
        for host, fid in sorted(tree.routes.items()):
            problem = route_problem(host, fid, tree.functions.get(fid) if fid else None)
            if problem is not None:
                kind, why = problem
                subject = fid if kind != Kind.UNDECODABLE else None
                found.append(Finding(kind, layout.route_path(host), why, subject, hostname=host))
        return found

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        host = finding.hostname
        assert host is not None
        route = await read_route(zk, host)
        if route is None:
            return None
        fid, version = route
        fn = await read_function(zk, fid) if fid else None
        problem = route_problem(host, fid, fn)
        if problem is None or problem[0] != finding.kind:
            return None
        return [delete(layout.route_path(host), version), *_unchanged_definition(fn)]


def missing_routes(fn: FunctionState, routes: dict[str, uuid.UUID | None]) -> list[str]:
    """Hostnames a function lists that have no route."""
    return sorted(h for h in fn.hostnames or () if h not in routes) if fn.exists else []


class MissingRoutes:
    def owns(self, finding: Finding) -> bool:
        return finding.kind == Kind.MISSING_ROUTE

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        return [
            Finding(
                Kind.MISSING_ROUTE,
                layout.route_path(host),
                f"function {fn.id} lists hostname {host!r} but it has no route",
                fn.id,
                hostname=host,
            )
            for fn in tree.functions.values()
            for host in missing_routes(fn, tree.routes)
        ]

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        host, fid = finding.hostname, finding.function_id
        assert host is not None and fid is not None
        fn, route = await asyncio.gather(read_function(zk, fid), read_route(zk, host))
        routes = {} if route is None else {host: route[0]}
        if host not in missing_routes(fn, routes):
            return None
        return [
            *_unchanged_definition(fn),
            create(layout.route_path(host), layout.encode_route(fid)),
        ]


# --- nodes ---------------------------------------------------------------------------------


def reservation_drift(node: NodeView | None) -> Reservation | None:
    """What the node's containers hold, when its recorded reservation differs from it."""
    if node is None or node.containers_version is None:
        return None
    held = Reservation()
    for c in node.containers.values():
        if c.record is None:
            return None  # a container's share is unknowable
        held = held.plus(c.record.cpu, c.record.memory, 1)
    same = (
        abs(held.cpu - node.reserved.cpu) < 1e-6
        and held.memory == node.reserved.memory
        and held.containers == node.reserved.containers
    )
    return None if same else held


class Reservations:
    def owns(self, finding: Finding) -> bool:
        return finding.kind == Kind.RESERVATION_DRIFT

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        nodes = await asyncio.gather(*(read_node(zk, ip) for ip in tree.ips))
        return [self._finding(n, held) for n in nodes if n and (held := reservation_drift(n))]

    @staticmethod
    def _finding(node: NodeView, held: Reservation) -> Finding:
        r = node.reserved
        return Finding(
            Kind.RESERVATION_DRIFT,
            layout.containers_path(node.ip),
            f"reserves cpu {r.cpu:g}, memory {r.memory}, {r.containers} container(s), but its"
            f" containers hold cpu {held.cpu:g}, memory {held.memory},"
            f" {held.containers} container(s)",
            ip=node.ip,
        )

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        assert finding.ip is not None
        node = await read_node(zk, finding.ip)
        held = reservation_drift(node)
        if node is None or held is None:
            return None
        path = layout.containers_path(node.ip)
        assert node.containers_version is not None  # reservation_drift needs it
        return [set_data(path, held.encode(), node.containers_version)]


def node_data_problem(data: bytes) -> str | None:
    if data in (layout.encode_enabled(True), layout.encode_enabled(False)):
        return None
    return f"node data {data[:16]!r} is not 0 or 1"


class NodeData:
    """Undecodable node znodes: reported, never repaired (an operator decides)."""

    def owns(self, finding: Finding) -> bool:
        return finding.kind == Kind.UNDECODABLE and finding.ip is not None

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        found = await asyncio.gather(*(self._judge(zk, ip) for ip in tree.ips))
        return [f for f in found if f]

    async def _judge(self, zk: ZooKeeper, ip: str) -> Finding | None:
        got = await zk.get_or_none(layout.node_path(ip))
        why = node_data_problem(got[0]) if got else None
        return Finding(Kind.UNDECODABLE, layout.node_path(ip), why, ip=ip) if why else None

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        assert finding.ip is not None
        return [] if await self._judge(zk, finding.ip) else None


# --- functions' own data -------------------------------------------------------------------


def undecodable_parts(fn: FunctionState) -> list[tuple[str, str]]:
    """(path, why) of a function's znodes that cannot be decoded."""
    parts = []
    if fn.exists and fn.hostnames is None:
        parts.append((layout.function_path(fn.id), "function definition is not a valid definition"))
    for listed, path in (
        (fn.backends, layout.backends_path(fn.id)),
        (fn.retiring, layout.retiring_path(fn.id)),
    ):
        if listed is not None and listed.backends is None:
            parts.append((path, "packed backends cannot be decoded"))
    return parts


class FunctionData:
    """Undecodable definitions and backend lists: reported, never repaired."""

    def owns(self, finding: Finding) -> bool:
        return (
            finding.kind == Kind.UNDECODABLE
            and finding.function_id is not None
            and finding.backend is None
            and finding.hostname is None
        )

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        return [
            Finding(Kind.UNDECODABLE, path, why, fn.id)
            for fn in tree.functions.values()
            for path, why in undecodable_parts(fn)
        ]

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        assert finding.function_id is not None
        fn = await read_function(zk, finding.function_id)
        return [] if finding.path in dict(undecodable_parts(fn)) else None


# --- what a function leaves behind ---------------------------------------------------------


class OrphanRollouts:
    def owns(self, finding: Finding) -> bool:
        return finding.kind == Kind.ORPHAN_ROLLOUT

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        fids = await child_ids(zk, layout.ROLLOUTS)
        orphans = await asyncio.gather(*(self._orphan(zk, f) for f in fids))
        return [
            Finding(
                Kind.ORPHAN_ROLLOUT,
                layout.retiring_path(fid),
                f"function {fid} does not exist",
                function_id=fid,
            )
            for fid, version in zip(fids, orphans, strict=True)
            if version is not None
        ]

    @staticmethod
    async def _orphan(zk: ZooKeeper, fid: uuid.UUID) -> int | None:
        """The rollout znode's version while its function does not exist."""
        got = await zk.get_or_none(layout.retiring_path(fid))
        if got is None or await function_exists(zk, fid):
            return None
        return got[1].version

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        assert finding.function_id is not None
        version = await self._orphan(zk, finding.function_id)
        if version is None:
            return None
        return [delete(layout.retiring_path(finding.function_id), version)]


class OrphanSecrets:
    def owns(self, finding: Finding) -> bool:
        return finding.kind == Kind.ORPHAN_SECRETS

    async def scan(self, zk: ZooKeeper, tree: Tree) -> list[Finding]:
        fids = await child_ids(zk, layout.SECRETS)
        exists = await asyncio.gather(*(function_exists(zk, f) for f in fids))
        return [
            Finding(
                Kind.ORPHAN_SECRETS,
                layout.secrets_path(fid),
                f"secrets of function {fid}, which does not exist",
                function_id=fid,
            )
            for fid, there in zip(fids, exists, strict=True)
            if not there
        ]

    async def plan(self, zk: ZooKeeper, finding: Finding) -> list[Op] | None:
        assert finding.function_id is not None
        if await function_exists(zk, finding.function_id):
            return None
        return await secret_removal_ops(zk, finding.function_id) or None


CHECKS: tuple[Check, ...] = (
    NodeData(),
    Reservations(),
    OrphanRollouts(),
    OrphanSecrets(),
    Containers(),
    FunctionData(),
    Backends(),
    MissingRoutes(),
    Routes(),
)


def check_of(finding: Finding) -> Check:
    for check in CHECKS:
        if check.owns(finding):
            return check
    raise ValueError(f"no check owns {finding}")
