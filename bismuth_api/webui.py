"""The status page at ``/ui/``: three static files, public, that call ``GET /status``.

A browser cannot send a bearer token on a plain navigation, so the page itself needs none:
it asks for the token, keeps it in the tab's ``sessionStorage`` (gone when the tab closes)
and fetches ``/status`` with ``Authorization: Bearer`` every few seconds. Only the JSON is
protected; the page holds nothing of the cluster. Everything it loads comes from the API
itself, and a Content-Security-Policy forbids anything else (no inline script, no other
origin), so names that tenants chose can never run as code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

FILES = {
    "/ui/": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/style.css": ("style.css", "text/css"),
}
PATHS = frozenset({"/ui", *FILES})
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)

    return serve


async def _to_slash(_request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/ui/")


def add_routes(router: web.UrlDispatcher) -> None:
    """``/ui/`` and its two assets (read once, from the package), and ``/ui`` -> ``/ui/``."""
    folder = resources.files(__package__ or "bismuth_api") / "ui"
    router.add_get("/ui", _to_slash)
    for path, (name, content_type) in FILES.items():
        router.add_get(path, _static((folder / name).read_bytes(), content_type))
