"""``bismuthctl``'s HTTP side: calls to ``bismuth-api`` with a bearer token.

Every answer that is not a success becomes the domain error of its status (400 and 413 a
bad request, 401 and 403 not authorized, 404 not found, 409 conflict, 503 unavailable), with
the API's own ``{"error": ...}`` message; an API that cannot be reached is
:class:`~bismuth_core.errors.Unavailable` naming its URL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp

from bismuth_core.errors import (
    BismuthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)

_ERRORS: dict[int, type[BismuthError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    503: Unavailable,
}


def _domain_error(status: int, body: bytes) -> BismuthError:
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace").strip()[:200] or f"HTTP {status}"
    if status == 401:
        message += " (give a token with --token, BISMUTH_TOKEN or the config file)"
    return _ERRORS.get(status, BismuthError)(f"API: {message}")


class ApiClient:
    """One session with the API at ``url``; use as ``async with ApiClient(...) as api``."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use ApiClient as an async context manager"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: object | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; its JSON answer (``None`` for an empty one)."""
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with self.session.request(
                method,
                self.url + path,
                json=json_body,
                data=data,
                params=params,
                timeout=timeout,
            ) as response:
                body = await response.read()
                if response.status >= 400:
                    raise _domain_error(response.status, body)
                return json.loads(body) if body.strip() else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        except ValueError as exc:
            raise Unavailable(f"API at {self.url}: answer is not JSON ({exc})") from exc

    async def lines(self, path: str, params: Mapping[str, str] | None = None) -> AsyncIterator[str]:
        """The lines of a streamed answer as they come (no read timeout)."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=None)
        try:
            async with self.session.get(
                self.url + path, params=params, timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise _domain_error(response.status, await response.read())
                async for raw in response.content:
                    yield raw.decode(errors="replace").rstrip("\r\n")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> Unavailable:
        detail = str(exc) or type(exc).__name__
        return Unavailable(f"cannot reach the API at {self.url}: {detail}")
