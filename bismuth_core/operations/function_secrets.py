"""Function secrets. Values arrive sealed (bismuth_core.secrets); nothing here sees or logs
a plain value.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from .. import layout
from ..errors import Conflict, NotFound
from ..zk import (
    NoNodeError,
    Op,
    ZooKeeper,
    check,
    create,
    delete,
    set_data,
)
from .races import retry_races

log = logging.getLogger(__name__)


async def require_function(zk: ZooKeeper, fid: uuid.UUID) -> None:
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
        await require_function(zk, fid)
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
    await require_function(zk, fid)
    try:
        await zk.delete(layout.secret_path(fid, name))
    except NoNodeError as exc:
        raise NotFound(f"function {fid} has no secret {name!r}") from exc
    log.info("secret %s deleted", name, extra={"function_id": fid})


async def secret_names(zk: ZooKeeper, fid: uuid.UUID) -> list[str]:
    """Names of function ``fid``'s secrets, sorted; :class:`NotFound` if it does not exist."""
    await require_function(zk, fid)
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
