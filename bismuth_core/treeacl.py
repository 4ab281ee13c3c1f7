"""Giving an environment's tree its ACLs: every znode, the chroot node included.

Znodes created by a session with the cluster's access get their ACL as they are made
(:class:`bismuth_core.zk.ZkAccess`). A tree made before ACLs (world-readable and -writable)
is swept once: each znode's ACL is set before its children are listed, so an anonymous
client can no longer add a child where the sweep has been, and whatever the cluster's own
daemons add meanwhile gets its ACL on creation. When every znode has been visited the
chroot node's data becomes :data:`bismuth_core.layout.ACL_MARKER`: a sweep cut short leaves
no mark and is done again by the next bootstrap. Setting an ACL that is already right is
skipped, so a second sweep changes nothing.
"""

from __future__ import annotations

import logging

from kazoo.security import ACL

from . import layout
from .zk import NoNodeError, ZooKeeper

log = logging.getLogger(__name__)

ROOT = "/"


def _same(a: list[ACL], b: list[ACL]) -> bool:
    def key(acls: list[ACL]) -> set[tuple[int, str, str]]:
        return {(acl.perms, acl.id.scheme, acl.id.id) for acl in acls}

    return key(a) == key(b)


async def is_secured(zk: ZooKeeper) -> bool:
    """Whether the tree was swept (marked) and its chroot node has the expected ACL."""
    expected = zk.acl(ROOT)
    if expected is None:
        return False
    got = await zk.get_or_none(ROOT)
    return (
        got is not None and got[0] == layout.ACL_MARKER and _same(await zk.get_acls(ROOT), expected)
    )


async def secure_tree(zk: ZooKeeper) -> int:
    """Give every znode the ACL ``zk``'s access gives its path; how many changed.

    ``zk`` must hold the cluster's access (it needs the ADMIN permission a world ACL grants
    anyone, and a secured one grants only the cluster).
    """
    changed = await _sweep(zk, ROOT)
    got = await zk.get_or_none(ROOT)
    if got is not None and got[0] != layout.ACL_MARKER:
        await zk.set(ROOT, layout.ACL_MARKER)
    if changed:
        log.info("gave %d znode(s) of environment %s the cluster's ACLs", changed, zk.env)
    return changed


async def _sweep(zk: ZooKeeper, path: str) -> int:
    expected = zk.acl(path)
    if expected is None:
        raise ValueError("securing a tree needs a session with the cluster's access")
    try:
        changed = 0
        if not _same(await zk.get_acls(path), expected):
            await zk.set_acls(path, expected)
            changed = 1
        children = await zk.children(path)
    except NoNodeError:
        return 0  # deleted meanwhile (an ephemeral node of a daemon that stopped)
    for child in sorted(children):
        changed += await _sweep(zk, f"{path.rstrip('/')}/{child}")
    return changed
