"""A stand-in for ``bismuthd`` until the agent exists: the ZooKeeper and HTTP sides only.

It holds the node's ephemeral ``alive`` znode (recreated after a session expires), writes a
status for each container scheduled onto its node, and serves ``/invoke/<cid>/<path>`` and
``/logs/<cid>`` on a loopback address, as the real agent does on the node's address, to
callers that present the cluster's agent credential (401 otherwise, as the agent answers).

Invoke paths it understands: ``/stream?bytes=N`` (N bytes of body), ``/echo`` (the request
body back), ``/slow?seconds=S``; anything else answers JSON describing the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from kazoo.client import KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from bismuth_core import layout
from bismuth_core.credentials import AGENT_HEADER, FrontendCredentials
from bismuth_core.layout import ContainerStatus, NodeAlive
from bismuth_core.zk import ZkAccess, ZooKeeper
from tests.support.clusterkey import ACCESS, CREDENTIALS


class StandInAgent:
    def __init__(
        self,
        hosts: str,
        env: str,
        ip: str,
        port: int,
        *,
        cpus: float = 4.0,
        memory: int = 8 << 30,
        version: str = "standin",
        status: ContainerStatus | None = ContainerStatus.RUNNING,
        start_delay: float = 0.0,
        credentials: FrontendCredentials = CREDENTIALS.frontend,
        access: ZkAccess | None = ACCESS,  # None: an agent of a release before ACLs
    ) -> None:
        self.ip, self.port = ip, port
        self.zk = ZooKeeper(hosts, env, access=access, session_timeout=4.0)
        self.alive = NodeAlive(cpus, memory, version)
        self.status = status  # written for new containers; None writes nothing
        self.start_delay = start_delay
        self.credentials = credentials
        self.known: set[uuid.UUID] = set()
        self.requests: Counter[uuid.UUID] = Counter()
        self._runner: web.AppRunner | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    async def start(self) -> None:
        await self.start_http()
        await self.zk.start()
        self.zk.add_listener(self._on_state)
        await self.announce()
        wake = self.zk.threadsafe(self._wake.set)
        ChildrenWatch(self.zk.client, layout.containers_path(self.ip), lambda _c: wake())
        self._task = asyncio.create_task(self._reconcile())

    async def start_http(self) -> None:
        app = web.Application(middlewares=[_require_credential])
        app[CHECKS] = self.credentials
        app.router.add_route("*", "/invoke/{cid}", self._invoke)
        app.router.add_route("*", "/invoke/{cid}/{path:.*}", self._invoke)
        app.router.add_get("/logs/{cid}", self._logs)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, self.port).start()

    async def stop_http(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop(self) -> None:
        """The node goes away: HTTP closed, session closed (``alive`` disappears)."""
        if self._task:
            self._task.cancel()
        await self.stop_http()
        await self.zk.stop()

    async def announce(self) -> None:
        with contextlib.suppress(NodeExistsError):
            await self.zk.create(layout.alive_path(self.ip), self.alive.encode(), ephemeral=True)

    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            self._spawn(self._reannounce())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reannounce(self) -> None:
        with contextlib.suppress(Exception):
            await self.announce()
        self._wake.set()

    async def _reconcile(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                names = await self.zk.children(layout.containers_path(self.ip))
            except Exception:
                continue
            current = {c for c in map(layout.parse_uuid, names) if c}
            for cid in current - self.known:
                self._spawn(self._start_container(cid))
            self.known = current

    async def _start_container(self, cid: uuid.UUID) -> None:
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self.status is not None and cid in self.known:
            await self.set_status(cid, self.status)

    async def set_status(self, cid: uuid.UUID, status: ContainerStatus) -> None:
        path = layout.status_path(self.ip, cid)
        data = layout.encode_status(status)
        try:
            await self.zk.set(path, data)
        except NoNodeError:
            with contextlib.suppress(NodeExistsError, NoNodeError):
                await self.zk.create(path, data)

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        cid = layout.parse_uuid(request.match_info["cid"])
        if cid is None or cid not in self.known:
            return web.json_response(
                {"error": "unknown container"},
                status=503,
                headers={"X-Bismuth-Not-Forwarded": "1"},
            )
        self.requests[cid] += 1
        path = "/" + request.match_info.get("path", "")
        headers = {"X-Bismuth-Container-ID": str(cid)}
        if path == "/stream":
            total = int(request.query.get("bytes", "0"))
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            chunk = b"x" * 65536
            sent = 0
            while sent < total:
                piece = chunk[: min(len(chunk), total - sent)]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
            return response
        if path == "/echo":
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            async for data in request.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response
        if path == "/slow":
            await asyncio.sleep(float(request.query.get("seconds", "1")))
        body = await request.read()
        return web.json_response(
            {
                "container_id": str(cid),
                "node": self.ip,
                "method": request.method,
                "path": path,
                "query": request.query_string,
                # what a container would see: the agent drops the credential
                "headers": {
                    k: v for k, v in request.headers.items() if k.lower() != AGENT_HEADER.lower()
                },
                "body_length": len(body),
            },
            headers=headers,
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        cid = layout.parse_uuid(request.match_info["cid"])
        if cid is None or cid not in self.known:
            return web.json_response({"error": "unknown container"}, status=404)
        if request.query.get("follow") != "true":
            return web.Response(text=f"started {cid}\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: started {cid}\n\n".encode())
        while cid in self.known:
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response


def _seen_by_container(request: web.Request) -> dict[str, str]:
    """The request's headers as a container sees them: the agent drops its credential."""
    return {k: v for k, v in request.headers.items() if k.lower() != AGENT_HEADER.lower()}


CHECKS = web.AppKey("checks", FrontendCredentials)


@web.middleware
async def _require_credential(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path != "/healthz" and not request.app[CHECKS].is_agent_credential(
        request.headers.get(AGENT_HEADER)
    ):
        return web.json_response({"error": "agent credential missing or wrong"}, status=401)
    return await handler(request)
