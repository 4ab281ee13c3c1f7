"""Functions: create, update (a new generation of containers) and delete, each one guarded
multi-op, with the function's tenant recorded.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

from .. import layout
from ..cluster import (
    FunctionView,
    read_function,
)
from ..definition import FunctionDefinition
from ..errors import NotFound
from ..fleet import LiveNodes, NodeSource
from ..zk import (
    NoNodeError,
    Op,
    TransactionFailed,
    ZooKeeper,
    create,
    delete,
    set_data,
)
from .function_secrets import secret_removal_ops
from .placement import (
    commit_placement,
    container_ops,
    new_backends,
    place_on,
    placement_deltas,
    remove_containers_ops,
    reservation_ops,
    retiring_op,
    union,
)
from .races import retry_races
from .routes import check_routes_free, route_conflict, route_owners

log = logging.getLogger(__name__)

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


def _tenant_gone(exc: TransactionFailed, ops: Sequence[Op], owner: uuid.UUID | None) -> None:
    """A function's owner was deleted while it was being created: no retry can help."""
    listed = (
        ops[exc.index].path.startswith(layout.tenant_functions_path(owner) + "/")
        if owner
        else False
    )
    if listed and isinstance(exc.cause, NoNodeError):
        raise NotFound(f"tenant {owner} does not exist") from exc


def _route_op(exc: TransactionFailed, ops: Sequence[Op]) -> bool:
    return ops[exc.index].path.startswith(layout.ROUTES + "/")


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
    fid = uuid.uuid4()

    async def attempt() -> uuid.UUID:
        # No read of the routes first: a hostname already taken fails the multi-op, which
        # is rare, and only then is it read, to name its owner.
        pinned = await guards()
        nodes, ips = await place_on(
            source, definition.max_instances, definition.cpu, definition.memory
        )
        backends = new_backends(ips)
        ops = [
            create(layout.function_path(fid), json.dumps(definition.to_json()).encode()),
            create(layout.backends_path(fid), layout.pack_backends(backends)),
            *(ownership_ops(owner, fid) if owner else []),
            *pinned,
            *await reservation_ops(zk, placement_deltas(ips, definition), nodes),
            *container_ops(backends, fid, definition),
            *(create(layout.route_path(h), layout.encode_route(fid)) for h in definition.routes),
        ]
        try:
            await commit_placement(source, ops)
        except TransactionFailed as exc:
            if _route_op(exc, ops):
                await check_routes_free(zk, definition.routes, fid)
            route_conflict(exc, ops)
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

    async def attempt() -> FunctionView:
        current = await read_function(zk, fid)
        new = definition or current.definition
        await check_routes_free(zk, new.routes, fid)
        pinned = await guards(current) if guards else []
        old_routes, new_routes = set(current.definition.routes), set(new.routes)
        owners = await route_owners(zk, old_routes - new_routes)
        # From the placement to the commit nothing waits: see commit_placement.
        nodes, ips = await place_on(source, new.max_instances, new.cpu, new.memory)
        fresh = new_backends(ips)
        ops = [
            set_data(
                layout.function_path(fid), json.dumps(new.to_json()).encode(), current.version
            ),
            set_data(
                layout.backends_path(fid),
                layout.pack_backends([*current.backends, *fresh]),
                current.backends_version,
            ),
            *retiring_op(current, union(current.retiring, current.backends)),
            *pinned,
            *await reservation_ops(zk, placement_deltas(ips, new), nodes),
            *container_ops(fresh, fid, new),
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
            await commit_placement(source, ops)
        except TransactionFailed as exc:
            route_conflict(exc, ops)
            raise
        log.info("updating function: %d new container(s)", len(fresh), extra={"function_id": fid})
        return await read_function(zk, fid)

    return await retry_races(attempt, "update function")


async def delete_function(zk: ZooKeeper, fid: uuid.UUID) -> None:
    async def attempt() -> None:
        current = await read_function(zk, fid)
        owners = await route_owners(zk, current.definition.routes)
        ops = [
            *await remove_containers_ops(zk, union(current.backends, current.retiring)),
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
