"""The provider's HTTP API, served to one container on its host-side veth address.

Every request, ``/healthz`` included, needs ``Authorization: Bearer <token>`` with the
container's token, compared in constant time; otherwise 401. Routes (DESIGN §4 "Inside a
container"):

- ``GET|POST|DELETE /kv/v1/<key>``: a value (``POST`` creates or replaces; 204);
- ``GET /blob/v1/?prefix=&after=&limit=``: ``{"keys": [...], "next": <key or null>}``;
  pass ``next`` as ``after`` for the following page;
- ``GET|HEAD|POST|PUT|DELETE /blob/v1/<key>``: ``HEAD`` gives the size only; ``POST``
  creates (409 if it exists), ``PUT`` replaces (404 if missing); bodies are streamed;
- ``GET /secrets/v1/<name>``: the function's secret, asked of the agent (which opens it).

Errors are JSON ``{"error": ...}``: 400 bad key, 401, 404, 409, 413 too large or over
quota, 503 storage or ZooKeeper unavailable. Tokens and values never reach the log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bismuth_core.errors import InvalidRequest, TooLarge, Unauthorized
from bismuth_core.weberrors import error_middleware

from .keys import validate_key, validate_prefix
from .secretstore import SecretReader
from .storage import Storage, WriteMode

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_CHUNK = 64 << 10
MAX_PAGE = 1000
REALM = "bismuth-provider"


@dataclass(frozen=True)
class Limits:
    max_value_bytes: int = 1 << 20
    max_blob_bytes: int = 256 << 20


@dataclass(frozen=True)
class ProviderDeps:
    token: str
    storage: Storage
    secrets: SecretReader
    limits: Limits = Limits()


DEPS = web.AppKey("deps", ProviderDeps)


def _log_answer(request: web.Request, response: web.StreamResponse) -> None:
    log.debug("%s %s → %d", request.method, request.path, response.status)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[DEPS].token.encode()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing bearer token: send Authorization: Bearer $BISMUTH_AUTH", REALM)
    if not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("wrong bearer token", REALM)
    return await handler(request)


def _key(request: web.Request) -> str:
    return validate_key(request.match_info["key"])


async def _read_limited(request: web.Request, limit: int, what: str) -> bytes:
    _check_length(request, limit, what)
    body = bytearray()
    async for chunk in request.content.iter_chunked(BODY_CHUNK):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"{what}: larger than the limit of {limit} bytes")
    return bytes(body)


def _check_length(request: web.Request, limit: int, what: str) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"{what}: {request.content_length} bytes, over the limit of {limit} bytes")


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(BODY_CHUNK):
        yield chunk


# --- handlers --------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def kv_get(request: web.Request) -> web.Response:
    value = await request.app[DEPS].storage.kv_get(_key(request))
    return web.Response(body=value, content_type="application/octet-stream")


async def kv_set(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    key = _key(request)
    value = await _read_limited(request, deps.limits.max_value_bytes, "value")
    await deps.storage.kv_set(key, value)
    return web.Response(status=204)


async def kv_delete(request: web.Request) -> web.Response:
    await request.app[DEPS].storage.kv_delete(_key(request))
    return web.Response(status=204)


async def blob_list(request: web.Request) -> web.Response:
    query = request.query
    prefix = validate_prefix(query.get("prefix", ""))
    after = query.get("after", "")
    try:
        limit = int(query.get("limit", str(MAX_PAGE)))
    except ValueError:
        raise InvalidRequest("limit: must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit: must be between 1 and {MAX_PAGE}")
    keys = await request.app[DEPS].storage.blob_list(prefix, after, limit + 1)
    more = len(keys) > limit
    keys = keys[:limit]
    return web.json_response({"keys": keys, "next": keys[-1] if more else None})


async def blob_get(request: web.Request) -> web.StreamResponse:
    blob = await request.app[DEPS].storage.blob_read(_key(request))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = blob.size
    await response.prepare(request)
    async for chunk in blob.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def blob_head(request: web.Request) -> web.StreamResponse:
    """A blob's headers without its body: nothing is opened or sent after them."""
    size = await request.app[DEPS].storage.blob_size(_key(request))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


async def _blob_write(request: web.Request, mode: WriteMode, status: int) -> web.Response:
    deps = request.app[DEPS]
    key = _key(request)
    _check_length(request, deps.limits.max_blob_bytes, "blob")
    size = await deps.storage.blob_write(key, _body(request), mode, deps.limits.max_blob_bytes)
    return web.json_response({"key": key, "size": size}, status=status)


async def blob_create(request: web.Request) -> web.Response:
    return await _blob_write(request, "create", 201)


async def blob_replace(request: web.Request) -> web.Response:
    return await _blob_write(request, "replace", 200)


async def blob_delete(request: web.Request) -> web.Response:
    await request.app[DEPS].storage.blob_delete(_key(request))
    return web.Response(status=204)


async def secret_get(request: web.Request) -> web.Response:
    value = await request.app[DEPS].secrets.read(request.match_info["name"])
    return web.Response(body=value, content_type="application/octet-stream")


def create_app(deps: ProviderDeps) -> web.Application:
    app = web.Application(middlewares=[error_middleware(observe=_log_answer), auth_middleware])
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/kv/v1/{key:.+}", kv_get)
    app.router.add_post("/kv/v1/{key:.+}", kv_set)
    app.router.add_delete("/kv/v1/{key:.+}", kv_delete)
    app.router.add_get("/blob/v1/", blob_list)
    app.router.add_get("/blob/v1/{key:.+}", blob_get, allow_head=False)
    app.router.add_head("/blob/v1/{key:.+}", blob_head)
    app.router.add_post("/blob/v1/{key:.+}", blob_create)
    app.router.add_put("/blob/v1/{key:.+}", blob_replace)
    app.router.add_delete("/blob/v1/{key:.+}", blob_delete)
    app.router.add_get("/secrets/v1/{name}", secret_get)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        yield
        await deps.secrets.close()
        await deps.storage.close()

    app.cleanup_ctx.append(resources)
    return app
