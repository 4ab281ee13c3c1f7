"""Hostnames: which function owns a route, and a route taken by another function as a
:class:`Conflict`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence

from .. import layout
from ..errors import Conflict
from ..zk import (
    NodeExistsError,
    Op,
    TransactionFailed,
    ZooKeeper,
)

log = logging.getLogger(__name__)


async def route_owners(zk: ZooKeeper, hostnames: Iterable[str]) -> dict[str, uuid.UUID | None]:
    names = list(hostnames)
    raws = await asyncio.gather(*(zk.get_or_none(layout.route_path(h)) for h in names))
    return {h: layout.decode_route(r[0]) for h, r in zip(names, raws, strict=True) if r}


async def check_routes_free(zk: ZooKeeper, hostnames: Iterable[str], fid: uuid.UUID) -> None:
    for host, owner in (await route_owners(zk, hostnames)).items():
        if owner != fid:
            raise Conflict(f"hostname {host!r} is already routed to function {owner}")


def route_conflict(exc: TransactionFailed, ops: Sequence[Op]) -> None:
    op = ops[exc.index]
    if isinstance(exc.cause, NodeExistsError) and op.path.startswith(layout.ROUTES + "/"):
        host = op.path.removeprefix(layout.ROUTES + "/")
        raise Conflict(f"hostname {host!r} is already routed to another function") from exc
