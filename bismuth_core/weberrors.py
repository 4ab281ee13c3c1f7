"""One JSON error middleware for every daemon's HTTP app.

Every :class:`~bismuth_core.errors.BismuthError` becomes its status with ``{"error": ...}``
(plus the headers the error asks for, e.g. ``WWW-Authenticate``); aiohttp's own HTTP errors
(no route, wrong method, body too large) become the same JSON; anything unexpected is logged
and answered ``500 {"error": "internal error"}`` without detail. Daemons differ only in two
hooks: ``translate`` turns one of aiohttp's errors into a domain error with a better message,
and ``observe`` sees every answer (metrics, trace headers).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import BismuthError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Translate = Callable[[web.Request, web.HTTPException], BismuthError | None]
Observe = Callable[[web.Request, web.StreamResponse], None]


def json_error(exc: BismuthError) -> web.Response:
    """The answer to a domain error: its status, its JSON body and its headers."""
    response = web.json_response(exc.to_json(), status=exc.status)
    response.headers.update(exc.headers())
    return response


def error_middleware(
    translate: Translate | None = None, observe: Observe | None = None
) -> Middleware:
    """The middleware: errors as JSON, then ``observe(request, response)`` on every answer."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await _answer(request, handler, translate)
        if observe is not None:
            observe(request, response)
        return response

    return errors


async def _answer(
    request: web.Request, handler: Handler, translate: Translate | None
) -> web.StreamResponse:
    try:
        return await handler(request)
    except BismuthError as exc:
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        domain = translate(request, exc) if translate is not None else None
        if domain is not None:
            return json_error(domain)
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception:
        log.exception("unexpected error", extra={"path": request.path})
        return web.json_response({"error": "internal error"}, status=500)
