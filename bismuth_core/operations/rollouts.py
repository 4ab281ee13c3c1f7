"""Rollouts and moves: retiring a generation once its successor runs, and replacing a
container of a drained or lost node elsewhere.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter

from .. import layout
from ..cluster import (
    FunctionView,
    read_function_or_none,
    read_node,
    read_statuses,
)
from ..fleet import LiveNodes, NodeSource
from ..layout import Backend, ContainerStatus
from ..zk import (
    ZooKeeper,
    delete,
    set_data,
)
from .placement import (
    add_delta,
    commit_placement,
    container_ops,
    new_backends,
    place_on,
    placement_deltas,
    removal_ops,
    remove_containers_ops,
    reservation_ops,
    retiring_op,
    union,
)
from .races import retry_races

log = logging.getLogger(__name__)


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
    zk: ZooKeeper,
    backend: Backend,
    *,
    lost: bool,
    source: NodeSource | None = None,
    function_id: uuid.UUID | None = None,
) -> Backend | None:
    """Start a replacement for ``backend`` elsewhere; the new backend, or None if dropped.

    ``lost``: the node is gone, so the old container is removed at once; otherwise it
    retires once its replacement runs (drain). A backend no function lists is removed.
    ``function_id``: the container's function, when the caller has read its node already
    (a first try then reads only the function). Raises :class:`InsufficientCapacity` when
    no other node can take it.
    """
    source = source or LiveNodes(zk)
    tries = 0

    async def attempt() -> Backend | None:
        nonlocal tries
        tries += 1
        fid = function_id if tries == 1 else None
        if fid is None:
            node = await read_node(zk, backend.ip)
            container = node.containers.get(backend.container_id) if node else None
            fid = container.record.function_id if container and container.record else None
        view = await read_function_or_none(zk, fid) if fid is not None else None
        if view is None or backend not in view.backends:
            await zk.commit(await remove_containers_ops(zk, [backend]))
            return None
        if backend in view.retiring:
            if lost:
                await _drop_backend(zk, view, backend)
            return None
        d = view.definition
        others = Counter(b.ip for b in view.active if b != backend)
        ops, freed = await removal_ops(zk, [backend]) if lost else ([], {})
        # From the placement to the commit nothing waits: see commit_placement.
        nodes, (ip,) = await place_on(
            source, 1, d.cpu, d.memory, exclude={backend.ip}, replicas=others
        )
        (fresh,) = new_backends([ip])
        deltas = placement_deltas([ip], d)
        if lost:
            backends = [fresh if b == backend else b for b in view.backends]
            for node_ip, delta in freed.items():
                add_delta(deltas, node_ip, *delta)
            retiring = list(view.retiring)
        else:
            backends = [*view.backends, fresh]
            retiring = union(view.retiring, [backend])
        ops += [
            set_data(
                layout.backends_path(view.id), layout.pack_backends(backends), view.backends_version
            ),
            *retiring_op(view, retiring),
            *await reservation_ops(zk, deltas, nodes),
            *container_ops([fresh], view.id, d),
        ]
        await commit_placement(source, ops)
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
        *retiring_op(view, [b for b in view.retiring if b != backend]),
    ]
    await zk.commit(ops)
