"""The controller's client of nginx's control socket (see ``lua/bismuth/control.lua``).

Routes go over as JSON objects ``{"function": ..., "direct": [...], "agent": [...]}``, each
peer ``{"address": ..., "port": ..., "container": ...}``; :func:`nginx_route` builds one from
a :class:`~bismuth_fe.routing.Route`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, UnixConnector

from bismuth_core.errors import BismuthError

from .routing import Route

NginxRoute = dict[str, Any]
REQUEST_TIMEOUT = 30.0


class ControlError(BismuthError):
    """nginx's control socket did not take a change; the message says why."""

    status = 502


class TableMismatch(ControlError):
    """A delta was refused: nginx does not hold the table it was computed against."""

    status = 409


@dataclass(frozen=True)
class NginxStatus:
    table: str | None  # id of the table last replaced in full; None after a restart
    routes: int
    generation: int


def nginx_route(route: Route, agent_port: int) -> NginxRoute:
    """What nginx needs of one route: Running containers, straight or through agents."""
    direct, agent = [], []
    for backend in route.backends:
        endpoint = route.endpoints.get(backend)
        if endpoint is not None:
            direct.append(
                {
                    "address": endpoint.address,
                    "port": endpoint.port,
                    "container": str(backend.container_id),
                }
            )
        else:
            agent.append(
                {"address": backend.ip, "port": agent_port, "container": str(backend.container_id)}
            )
    return {"function": str(route.function_id), "direct": direct, "agent": agent}


class NginxControl:
    """Requests to the control socket, one aiohttp session over the unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._session: ClientSession | None = None

    def _http(self) -> ClientSession:
        if self._session is None or self._session.closed:
            self._session = ClientSession(
                connector=UnixConnector(path=str(self.socket_path)),
                timeout=ClientTimeout(total=REQUEST_TIMEOUT),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        try:
            async with self._http().request(
                method,
                f"http://nginx{path}",
                data=data,
                headers={"Content-Type": "application/json"},
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status == 409:
                    raise TableMismatch(str(answer.get("error")))
                if resp.status != 200:
                    raise ControlError(f"nginx answered {resp.status}: {answer.get('error')}")
                return answer
        except (ClientError, OSError, TimeoutError, ValueError) as exc:
            raise ControlError(f"control socket {self.socket_path}: {exc!r}") from exc

    async def status(self) -> NginxStatus:
        return _status(await self._call("GET", "/v1/status"))

    async def replace(self, table: str, routes: dict[str, NginxRoute]) -> NginxStatus:
        return _status(await self._call("PUT", "/v1/routes", {"table": table, "routes": routes}))

    async def update(self, table: str, changed: dict[str, NginxRoute], deleted: list[str]) -> None:
        await self._call("PATCH", "/v1/routes", {"table": table, "set": changed, "delete": deleted})

    async def routes(self) -> dict[str, NginxRoute]:
        raw = await self._call("GET", "/v1/routes")
        return {host: _normalized(route) for host, route in raw["routes"].items()}

    async def metrics(self) -> dict[str, float]:
        raw = await self._call("GET", "/v1/metrics")
        return {str(k): float(v) for k, v in raw.items()}


def _status(raw: Any) -> NginxStatus:
    table = raw.get("table")
    return NginxStatus(table if isinstance(table, str) else None, raw["routes"], raw["generation"])


def _normalized(route: NginxRoute) -> NginxRoute:
    """Lua's JSON encoder writes empty lists as ``{}``: read them back as lists."""
    return {
        **route,
        "direct": list(route.get("direct") or []),
        "agent": list(route.get("agent") or []),
    }
