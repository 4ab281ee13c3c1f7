"""Cluster set-up and nodes: bootstrap of an environment's tree, provisioning, enabling,
draining and removing nodes.
"""

from __future__ import annotations

import contextlib
import logging

from .. import layout, treeacl
from ..cluster import (
    read_node,
)
from ..errors import Conflict, InsufficientCapacity, NotFound
from ..fleet import NodeSource
from ..layout import Backend
from ..zk import (
    NodeExistsError,
    NoNodeError,
    TransactionFailed,
    ZooKeeper,
    create,
    delete,
)
from .rollouts import move_container

log = logging.getLogger(__name__)


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
