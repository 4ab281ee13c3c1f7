"""Who is calling the API: bearer tokens checked against their hashes in ZooKeeper.

Every route but :data:`PUBLIC` (health, the OpenAPI document, the status page's static
files, which hold nothing of the cluster) needs ``Authorization: Bearer <token>``; anything
else is a 401 with ``WWW-Authenticate: Bearer``. A token whose shape is wrong is refused before any
lookup. :class:`TokenCache` keeps every token record in memory with kazoo's ``TreeCache``
over ``/token``: a revoked token is gone from it as soon as the watch fires (milliseconds
while the API is connected to ZooKeeper); an id the cache does not hold yet (a token issued
a moment ago) is read from ZooKeeper once before it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from kazoo.recipe.cache import TreeCache, TreeEvent

from bismuth_core import layout, tokens
from bismuth_core.errors import Forbidden, Unauthorized, Unavailable
from bismuth_core.layout import TokenRecord
from bismuth_core.tenancy import Caller, authenticate
from bismuth_core.zk import ZooKeeper

from . import webui

log = logging.getLogger(__name__)

PUBLIC = frozenset({"/healthz", "/openapi.json", *webui.PATHS})
CALLER = web.RequestKey("caller", Caller)
INITIAL_SYNC_TIMEOUT = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenCache:
    """Token records by id, followed from ZooKeeper."""

    def __init__(self, zk: ZooKeeper) -> None:
        self._zk = zk
        self._tree: TreeCache | None = None
        self._ready = asyncio.Event()

    async def start(self, timeout: float = INITIAL_SYNC_TIMEOUT) -> None:
        tree = TreeCache(self._zk.client, layout.TOKENS)
        ready = self._zk.threadsafe(self._ready.set)
        tree.listen(lambda event: ready() if event.event_type == TreeEvent.INITIALIZED else None)
        self._tree = tree
        await asyncio.to_thread(tree.start)
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError as exc:
            raise Unavailable(f"tokens not loaded from ZooKeeper within {timeout}s") from exc

    def close(self) -> None:
        if self._tree is not None:
            with contextlib.suppress(Exception):
                self._tree.close()
            self._tree = None

    async def record(self, token_id: str) -> TokenRecord | None:
        path = layout.token_path(token_id)
        node = self._tree.get_data(path) if self._tree is not None else None
        if node is not None:
            return TokenRecord.decode(node.data)
        got = await self._zk.get_or_none(path)  # issued since the cache last heard
        return TokenRecord.decode(got[0]) if got else None

    async def caller(self, header: str | None) -> Caller:
        """The caller an ``Authorization`` header stands for; :class:`Unauthorized` if none."""
        if header is None:
            raise Unauthorized("this endpoint needs a token: Authorization: Bearer <token>")
        presented = tokens.parse(tokens.bearer(header) or "")
        if presented is None:
            raise Unauthorized("malformed credential: send Authorization: Bearer bth_...")
        found = authenticate(presented, await self.record(presented.id))
        if found is None:
            raise Unauthorized("unknown or revoked token")
        return found


def require_admin(caller: Caller, what: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"{what} needs an admin token")


def auth_middleware(
    cache: Callable[[web.Request], TokenCache],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticate every request but the public routes; the caller goes to ``request[CALLER]``."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC:
            header = request.headers.get("Authorization")
            request[CALLER] = await cache(request).caller(header)
        return await handler(request)

    return check
