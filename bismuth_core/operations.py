"""Every change to desired state, each as one guarded ZooKeeper multi-op.

Used by the control plane (create, update, delete, finishing rollouts, replacing containers
of lost nodes, secrets) and by ``bismuthctl`` (bootstrap, provision, drain, consistency,
secrets). Writers race on version checks: a function's znodes are guarded by their
versions, and every node that receives containers has its ``container`` znode's version
bumped in the same multi-op, so two schedulers can never both fill the same free capacity.
A lost race is retried with freshly read state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import layout, treeacl
from .cluster import (
    FunctionView,
    NodeView,
    read_function,
    read_function_or_none,
    read_node,
    read_statuses,
)
from .definition import FunctionDefinition
from .errors import Conflict, InsufficientCapacity, NotFound, Unavailable
from .fleet import LiveNodes, NodeSource
from .layout import Backend, ContainerRecord, ContainerStatus, Reservation
from .scheduler import place
from .zk import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    Op,
    TransactionFailed,
    ZooKeeper,
    check,
    create,
    delete,
    set_data,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ATTEMPTS = 8
_RACES = (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError)


async def retry_races(attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``attempt`` again while it loses a version race; bounded, with backoff."""
    for n in range(ATTEMPTS):
        try:
            return await attempt()
        except TransactionFailed as exc:
            if not isinstance(exc.cause, _RACES):
                raise
            log.debug("retrying %s after %r", what, exc.cause)
            await asyncio.sleep(min(0.01 * 2**n, 0.5))
    raise Unavailable(f"{what}: too much concurrent change, try again")


def _container_ops(
    backends: Iterable[Backend], fid: uuid.UUID, definition: FunctionDefinition
) -> list[Op]:
    record = ContainerRecord(fid, definition.cpu, definition.memory).encode()
    return [create(layout.container_path(b.ip, b.container_id), record) for b in backends]


Deltas = dict[str, tuple[float, int, int]]  # per node: cpu, memory, container count


def _add_delta(deltas: Deltas, ip: str, cpu: float, memory: int, count: int) -> None:
    c, m, n = deltas.get(ip, (0.0, 0, 0))
    deltas[ip] = (c + cpu, m + memory, n + count)


def _placement_deltas(ips: Iterable[str], definition: FunctionDefinition) -> Deltas:
    deltas: Deltas = {}
    for ip in ips:
        _add_delta(deltas, ip, definition.cpu, definition.memory, 1)
    return deltas


async def _reservation_ops(
    zk: ZooKeeper, deltas: Deltas, known: Mapping[str, NodeView] | None = None
) -> list[Op]:
    """Rewrite each changed node's reservation, guarded by the version it was read at.

    For nodes in ``known`` (the snapshot a placement was decided on) that snapshot's
    version is used, so a concurrent placement on the same node makes the multi-op fail.
    """
    ops: list[Op] = []
    for ip in sorted(deltas):
        view = (known or {}).get(ip)
        if view is not None:
            current, version = view.reserved, view.containers_version
        else:
            got = await zk.get_or_none(layout.containers_path(ip))
            current = Reservation.decode(got[0]) if got else Reservation()
            version = got[1].version if got else None
        data = current.plus(*deltas[ip]).encode()
        path = layout.containers_path(ip)
        ops.append(create(path, data) if version is None else set_data(path, data, version))
    return ops


async def removal_ops(zk: ZooKeeper, backends: Iterable[Backend]) -> tuple[list[Op], Deltas]:
    """Delete container znodes (status first); absent ones need nothing.

    Returns the ops and the reservations they free, per node.
    """
    items = sorted(set(backends))
    found = await asyncio.gather(
        *(zk.get_or_none(layout.container_path(b.ip, b.container_id)) for b in items),
        *(zk.exists(layout.status_path(b.ip, b.container_id)) for b in items),
    )
    ops: list[Op] = []
    deltas: Deltas = {}
    for i, b in enumerate(items):
        if found[len(items) + i] is not None:
            ops.append(delete(layout.status_path(b.ip, b.container_id)))
        got = found[i]
        if got is not None:
            ops.append(delete(layout.container_path(b.ip, b.container_id)))
            try:
                record = ContainerRecord.decode(got[0])
                _add_delta(deltas, b.ip, -record.cpu, -record.memory, -1)
            except ValueError:
                _add_delta(deltas, b.ip, 0.0, 0, -1)
    return ops, deltas


async def remove_containers_ops(zk: ZooKeeper, backends: Iterable[Backend]) -> list[Op]:
    """Ops deleting these containers and releasing what they reserved on their nodes."""
    ops, deltas = await removal_ops(zk, backends)
    return [*ops, *await _reservation_ops(zk, deltas)]


def _retiring_op(view: FunctionView, retiring: Sequence[Backend]) -> list[Op]:
    path = layout.retiring_path(view.id)
    if view.retiring_version is None:
        return [create(path, layout.pack_backends(retiring))] if retiring else []
    if not retiring:
        return [delete(path, view.retiring_version)]
    return [set_data(path, layout.pack_backends(retiring), view.retiring_version)]


async def _place(
    source: NodeSource,
    tries: int,
    count: int,
    cpu: float,
    memory: int,
    **constraints: Any,
) -> tuple[dict[str, NodeView], list[str]]:
    """Nodes as the source has them and a placement on them.

    A first try may use cached nodes; if those cannot fit the request, the answer is
    confirmed from fresh reads before the shortfall is reported.
    """
    nodes = await source.nodes(fresh=tries > 1)
    try:
        return nodes, place(
            (n.capacity() for n in nodes.values()), count, cpu, memory, **constraints
        )
    except InsufficientCapacity:
        if tries > 1:
            raise
    nodes = await source.nodes(fresh=True)
    return nodes, place((n.capacity() for n in nodes.values()), count, cpu, memory, **constraints)


def _new_backends(ips: Iterable[str]) -> list[Backend]:
    return [Backend(ip, uuid.uuid4()) for ip in ips]


async def _route_owners(zk: ZooKeeper, hostnames: Iterable[str]) -> dict[str, uuid.UUID | None]:
    names = list(hostnames)
    raws = await asyncio.gather(*(zk.get_or_none(layout.route_path(h)) for h in names))
    return {h: layout.decode_route(r[0]) for h, r in zip(names, raws, strict=True) if r}


async def _check_routes_free(zk: ZooKeeper, hostnames: Iterable[str], fid: uuid.UUID) -> None:
    for host, owner in (await _route_owners(zk, hostnames)).items():
        if owner != fid:
            raise Conflict(f"hostname {host!r} is already routed to function {owner}")


def _tenant_gone(exc: TransactionFailed, ops: Sequence[Op], owner: uuid.UUID | None) -> None:
    """A function's owner was deleted while it was being created: no retry can help."""
    listed = (
        ops[exc.index].path.startswith(layout.tenant_functions_path(owner) + "/")
        if owner
        else False
    )
    if listed and isinstance(exc.cause, NoNodeError):
        raise NotFound(f"tenant {owner} does not exist") from exc


def _route_conflict(exc: TransactionFailed, ops: Sequence[Op]) -> None:
    op = ops[exc.index]
    if isinstance(exc.cause, NodeExistsError) and op.path.startswith(layout.ROUTES + "/"):
        host = op.path.removeprefix(layout.ROUTES + "/")
        raise Conflict(f"hostname {host!r} is already routed to another function") from exc


# --- cluster set-up -------------------------------------------------------------------


async def bootstrap(zk: ZooKeeper) -> bool:
    """Create the environment's chroot node and top-level znodes, and give a tree made before
    ACLs the cluster's (when ``zk`` holds the cluster's access); True if anything changed."""
    changed = False
    if await zk.exists("/") is None:
        with contextlib.suppress(NodeExistsError):  # marked: a new tree has its ACLs at once
            await zk.create("/", layout.ACL_MARKER if zk.acl("/") else b"")
            changed = True
    missing = [root for root in layout.ROOTS if await zk.exists(root) is None]
    for root in missing:
        await zk.ensure_path(root)
    if zk.acl("/") is not None and not await treeacl.is_secured(zk):
        await treeacl.secure_tree(zk)
        changed = True
    return changed or bool(missing)


async def is_bootstrapped(zk: ZooKeeper) -> bool:
    return all([await zk.exists(root) is not None for root in layout.ROOTS])


async def provision(zk: ZooKeeper, ip: str) -> bool:
    """Register node ``ip`` as enabled; True if it was new. An existing node is left as is."""
    if await zk.exists(layout.node_path(ip)) is not None:
        if await zk.exists(layout.containers_path(ip)) is None:
            await zk.ensure_path(layout.containers_path(ip))
        return False
    try:
        await zk.commit(
            [
                create(layout.node_path(ip), layout.encode_enabled(True)),
                create(layout.containers_path(ip)),
            ]
        )
    except TransactionFailed as exc:
        if isinstance(exc.cause, NodeExistsError):
            return False
        raise
    return True


async def set_enabled(zk: ZooKeeper, ip: str, enabled: bool) -> None:
    try:
        await zk.set(layout.node_path(ip), layout.encode_enabled(enabled))
    except NoNodeError as exc:
        raise NotFound(f"node {ip} is not provisioned") from exc


async def deprovision(zk: ZooKeeper, ip: str) -> None:
    """Remove node ``ip``; refused while it has containers or a live agent."""
    node = await read_node(zk, ip)
    if node is None:
        raise NotFound(f"node {ip} is not provisioned")
    if node.containers:
        raise Conflict(f"node {ip} still has {len(node.containers)} container(s); drain it first")
    if node.alive is not None:
        raise Conflict(f"node {ip} has a live agent; stop the agent first")
    ops = [delete(layout.containers_path(ip))] if node.containers_version is not None else []
    await zk.commit([*ops, delete(layout.node_path(ip))])


# --- functions ----------------------------------------------------------------------


Guards = Callable[[], Awaitable[list[Op]]]  # ops pinning what a change relies on


async def _no_guards() -> list[Op]:
    return []


def ownership_ops(tid: uuid.UUID, fid: uuid.UUID) -> list[Op]:
    """Ops recording that tenant ``tid`` owns function ``fid`` (after the function's create)."""
    return [
        create(layout.owner_path(fid), layout.encode_owner(tid)),
        create(layout.tenant_function_path(tid, fid)),
    ]


async def _ownership_removal_ops(zk: ZooKeeper, view: FunctionView) -> list[Op]:
    if view.owner is None:
        return []
    listed = layout.tenant_function_path(view.owner, view.id)
    ops = [delete(listed)] if await zk.exists(listed) is not None else []
    return [*ops, delete(layout.owner_path(view.id))]


async def create_function(
    zk: ZooKeeper,
    definition: FunctionDefinition,
    source: NodeSource | None = None,
    *,
    owner: uuid.UUID | None = None,
    guards: Guards = _no_guards,
) -> uuid.UUID:
    """Create and place a function; ``owner`` is its tenant (None: an unowned function, as
    made before tenants). ``guards`` give ops (rebuilt on each try) that must hold too."""
    source = source or LiveNodes(zk)
    tries = 0
    fid = uuid.uuid4()

    async def attempt() -> uuid.UUID:
        nonlocal tries
        tries += 1
        await _check_routes_free(zk, definition.routes, fid)
        pinned = await guards()
        nodes, ips = await _place(
            source, tries, definition.max_instances, definition.cpu, definition.memory
        )
        backends = _new_backends(ips)
        ops = [
            create(layout.function_path(fid), json.dumps(definition.to_json()).encode()),
            create(layout.backends_path(fid), layout.pack_backends(backends)),
            *(ownership_ops(owner, fid) if owner else []),
            *pinned,
            *await _reservation_ops(zk, _placement_deltas(ips, definition), nodes),
            *_container_ops(backends, fid, definition),
            *(create(layout.route_path(h), layout.encode_route(fid)) for h in definition.routes),
        ]
        try:
            source.committed(ops, await zk.commit(ops))
        except TransactionFailed as exc:
            _route_conflict(exc, ops)
            _tenant_gone(exc, ops, owner)
            raise
        log.info("created function with %d container(s)", len(backends), extra={"function_id": fid})
        return fid

    return await retry_races(attempt, "create function")


async def update_function(
    zk: ZooKeeper,
    fid: uuid.UUID,
    definition: FunctionDefinition | None,
    source: NodeSource | None = None,
    *,
    guards: Callable[[FunctionView], Awaitable[list[Op]]] | None = None,
) -> FunctionView:
    """Start a new generation of containers; the current ones retire once those run.

    ``definition`` None redeploys the current definition in new containers. ``guards``
    give ops (rebuilt on each try, from the function as read) that must hold too.
    """
    source = source or LiveNodes(zk)
    tries = 0

    async def attempt() -> FunctionView:
        nonlocal tries
        tries += 1
        current = await read_function(zk, fid)
        new = definition or current.definition
        await _check_routes_free(zk, new.routes, fid)
        pinned = await guards(current) if guards else []
        nodes, ips = await _place(source, tries, new.max_instances, new.cpu, new.memory)
        fresh = _new_backends(ips)
        old_routes, new_routes = set(current.definition.routes), set(new.routes)
        owners = await _route_owners(zk, old_routes - new_routes)
        ops = [
            set_data(
                layout.function_path(fid), json.dumps(new.to_json()).encode(), current.version
            ),
            set_data(
                layout.backends_path(fid),
                layout.pack_backends([*current.backends, *fresh]),
                current.backends_version,
            ),
            *_retiring_op(current, _union(current.retiring, current.backends)),
            *pinned,
            *await _reservation_ops(zk, _placement_deltas(ips, new), nodes),
            *_container_ops(fresh, fid, new),
            *(
                delete(layout.route_path(h))
                for h in sorted(old_routes - new_routes)
                if owners.get(h) == fid
            ),
            *(
                create(layout.route_path(h), layout.encode_route(fid))
                for h in sorted(new_routes - old_routes)
            ),
        ]
        try:
            source.committed(ops, await zk.commit(ops))
        except TransactionFailed as exc:
            _route_conflict(exc, ops)
            raise
        log.info("updating function: %d new container(s)", len(fresh), extra={"function_id": fid})
        return await read_function(zk, fid)

    return await retry_races(attempt, "update function")


async def delete_function(zk: ZooKeeper, fid: uuid.UUID) -> None:
    async def attempt() -> None:
        current = await read_function(zk, fid)
        owners = await _route_owners(zk, current.definition.routes)
        ops = [
            *await remove_containers_ops(zk, _union(current.backends, current.retiring)),
            *(delete(layout.route_path(h)) for h, o in sorted(owners.items()) if o == fid),
            *(
                [delete(layout.retiring_path(fid), current.retiring_version)]
                if current.retiring_version is not None
                else []
            ),
            *await secret_removal_ops(zk, fid),
            *await _ownership_removal_ops(zk, current),
            delete(layout.backends_path(fid), current.backends_version),
            delete(layout.function_path(fid), current.version),
        ]
        await zk.commit(ops)
        log.info("deleted function", extra={"function_id": fid})

    await retry_races(attempt, "delete function")


def _union(*groups: Iterable[Backend]) -> list[Backend]:
    seen: dict[Backend, None] = {}
    for group in groups:
        for b in group:
            seen.setdefault(b)
    return list(seen)


# --- rollouts, drains and lost nodes --------------------------------------------------


async def finish_rollout(zk: ZooKeeper, fid: uuid.UUID) -> bool:
    """Remove retiring containers once every other backend is Running; True if done."""

    async def attempt() -> bool:
        view = await read_function_or_none(zk, fid)
        if view is None or view.retiring_version is None:
            return False
        active = view.active
        statuses = await read_statuses(zk, active)
        if not active or any(s != ContainerStatus.RUNNING for s in statuses.values()):
            return False
        ops = [
            *await remove_containers_ops(zk, view.retiring),
            set_data(
                layout.backends_path(fid), layout.pack_backends(active), view.backends_version
            ),
            delete(layout.retiring_path(fid), view.retiring_version),
        ]
        await zk.commit(ops)
        log.info(
            "rollout finished: retired %d container(s)",
            len(view.retiring),
            extra={"function_id": fid},
        )
        return True

    return await retry_races(attempt, "finish rollout")


async def move_container(
    zk: ZooKeeper, backend: Backend, *, lost: bool, source: NodeSource | None = None
) -> Backend | None:
    """Start a replacement for ``backend`` elsewhere; the new backend, or None if dropped.

    ``lost``: the node is gone, so the old container is removed at once; otherwise it
    retires once its replacement runs (drain). A backend no function lists is removed.
    Raises :class:`InsufficientCapacity` when no other node can take it.
    """
    source = source or LiveNodes(zk)
    tries = 0

    async def attempt() -> Backend | None:
        nonlocal tries
        tries += 1
        node = await read_node(zk, backend.ip)
        container = node.containers.get(backend.container_id) if node else None
        view = None
        if container is not None and container.record is not None:
            view = await read_function_or_none(zk, container.record.function_id)
        if view is None or backend not in view.backends:
            await zk.commit(await remove_containers_ops(zk, [backend]))
            return None
        if backend in view.retiring:
            if lost:
                await _drop_backend(zk, view, backend)
            return None
        d = view.definition
        others = Counter(b.ip for b in view.active if b != backend)
        nodes, (ip,) = await _place(
            source, tries, 1, d.cpu, d.memory, exclude={backend.ip}, replicas=others
        )
        (fresh,) = _new_backends([ip])
        deltas = _placement_deltas([ip], d)
        if lost:
            backends = [fresh if b == backend else b for b in view.backends]
            ops, freed = await removal_ops(zk, [backend])
            for node_ip, delta in freed.items():
                _add_delta(deltas, node_ip, *delta)
            retiring = list(view.retiring)
        else:
            backends = [*view.backends, fresh]
            ops = []
            retiring = _union(view.retiring, [backend])
        ops += [
            set_data(
                layout.backends_path(view.id), layout.pack_backends(backends), view.backends_version
            ),
            *_retiring_op(view, retiring),
            *await _reservation_ops(zk, deltas, nodes),
            *_container_ops([fresh], view.id, d),
        ]
        source.committed(ops, await zk.commit(ops))
        log.info(
            "moved container to %s",
            ip,
            extra={
                "function_id": view.id,
                "container_id": backend.container_id,
                "node": backend.ip,
            },
        )
        return fresh

    return await retry_races(attempt, "move container")


async def _drop_backend(zk: ZooKeeper, view: FunctionView, backend: Backend) -> None:
    ops = [
        *await remove_containers_ops(zk, [backend]),
        set_data(
            layout.backends_path(view.id),
            layout.pack_backends([b for b in view.backends if b != backend]),
            view.backends_version,
        ),
        *_retiring_op(view, [b for b in view.retiring if b != backend]),
    ]
    await zk.commit(ops)


async def drain(
    zk: ZooKeeper, ip: str, source: NodeSource | None = None
) -> tuple[list[Backend], list[str]]:
    """Disable ``ip`` and start replacements of its containers on other nodes.

    Returns (replacements started, problems). The drained containers keep serving until
    their replacements run; the API's leader then removes them.
    """
    await set_enabled(zk, ip, False)
    node = await read_node(zk, ip)
    moved: list[Backend] = []
    problems: list[str] = []
    for cid in sorted(node.containers if node else ()):
        try:
            fresh = await move_container(zk, Backend(ip, cid), lost=False, source=source)
        except InsufficientCapacity as exc:
            problems.append(f"container {cid}: {exc.message}")
            continue
        if fresh is not None:
            moved.append(fresh)
    return moved, problems


# --- secrets --------------------------------------------------------------------------
# Values arrive sealed (bismuth_core.secrets); nothing here sees or logs a plain value.


async def _require_function(zk: ZooKeeper, fid: uuid.UUID) -> None:
    if await zk.exists(layout.function_path(fid)) is None:
        raise NotFound(f"function {fid} not found")


async def set_secret(
    zk: ZooKeeper, fid: uuid.UUID, name: str, sealed: bytes, max_count: int | None = None
) -> bool:
    """Create or replace secret ``name`` of function ``fid``; True if it was new.

    The multi-op checks that the function exists, so a secret never outlives a concurrent
    delete of its function (which in turn fails on a secret added meanwhile, and retries).
    A new secret past ``max_count`` is a :class:`Conflict`: creating one rewrites the
    parent's data guarded by its version, so two creators racing past the count cannot both
    succeed (the loser counts again).
    """

    async def attempt() -> bool:
        await _require_function(zk, fid)
        root, parent, existing = await asyncio.gather(
            zk.exists(layout.SECRETS),  # absent in an environment older than secrets
            zk.exists(layout.secrets_path(fid)),
            zk.exists(layout.secret_path(fid, name)),
        )
        held = parent.numChildren if parent is not None else 0
        if existing is None and max_count is not None and held >= max_count:
            raise Conflict(
                f"function {fid} has {held} secrets, the most it may have (max_secrets): "
                "delete one first"
            )
        path = layout.secret_path(fid, name)
        guard = [] if parent is None else [set_data(layout.secrets_path(fid), b"", parent.version)]
        ops = [
            check(layout.function_path(fid), -1),  # any version: it exists
            *([create(layout.SECRETS)] if root is None else []),
            *([create(layout.secrets_path(fid))] if parent is None else []),
            *(guard if existing is None else []),
            create(path, sealed) if existing is None else set_data(path, sealed),
        ]
        await zk.commit(ops)
        return existing is None

    created = await retry_races(attempt, "set secret")
    log.info("secret %s %s", name, "created" if created else "replaced", extra={"function_id": fid})
    return created


async def delete_secret(zk: ZooKeeper, fid: uuid.UUID, name: str) -> None:
    """Delete secret ``name`` of function ``fid``; :class:`NotFound` if either is absent."""
    await _require_function(zk, fid)
    try:
        await zk.delete(layout.secret_path(fid, name))
    except NoNodeError as exc:
        raise NotFound(f"function {fid} has no secret {name!r}") from exc
    log.info("secret %s deleted", name, extra={"function_id": fid})


async def secret_names(zk: ZooKeeper, fid: uuid.UUID) -> list[str]:
    """Names of function ``fid``'s secrets, sorted; :class:`NotFound` if it does not exist."""
    await _require_function(zk, fid)
    return sorted(await zk.children(layout.secrets_path(fid)))


async def read_sealed_secret(zk: ZooKeeper, fid: uuid.UUID, name: str) -> bytes:
    """Secret ``name`` of function ``fid`` as stored (sealed); :class:`NotFound` if absent."""
    got = await zk.get_or_none(layout.secret_path(fid, name))
    if got is None:
        raise NotFound(f"function {fid} has no secret {name!r}")
    return got[0]


async def secret_removal_ops(zk: ZooKeeper, fid: uuid.UUID) -> list[Op]:
    """Ops deleting every secret of ``fid`` and their parent; none if it has none.

    A secret added after this read makes the parent's delete fail (not empty): the caller's
    multi-op then loses the race and is retried with fresh reads.
    """
    if await zk.exists(layout.secrets_path(fid)) is None:
        return []
    names = await zk.children(layout.secrets_path(fid))
    return [
        *(delete(layout.secret_path(fid, n)) for n in sorted(names)),
        delete(layout.secrets_path(fid)),
    ]
