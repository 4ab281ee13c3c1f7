"""A stand-in for ``bismuthd``: the ZooKeeper and HTTP sides only, with pretend containers.

It holds the node's ephemeral ``alive`` znode (recreated after a session expires), writes a
status for each container scheduled onto its node, and serves ``/invoke/<cid>/<path>`` and
``/logs/<cid>`` on a loopback address, as the real agent does on the node's address, to
callers that present the cluster's agent credential (401 otherwise, as the agent answers).
With ``direct`` (the default), each container also gets an HTTP server of its own on the
node's address and a free port, announced in its ``Running`` status as real Server-mode
containers are, so frontends connect to it straight.

Paths a container understands: ``/stream?bytes=N`` (N bytes of body), ``/echo`` (the
request body back), ``/digest`` (the body's length and SHA-256 once all of it came in; bytes
are counted in ``received`` as they arrive), ``/slow?seconds=S``, ``/accel`` (answers with
headers that try to steer a proxy); anything else answers JSON describing the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
        direct: bool = True,
    ) -> None:
        self.ip, self.port = ip, port
        self.zk = ZooKeeper(hosts, env, access=access, session_timeout=4.0)
        self.alive = NodeAlive(cpus, memory, version)
        self.status = status  # written for new containers; None writes nothing
        self.start_delay = start_delay
        self.credentials = credentials
        self.known: set[uuid.UUID] = set()
        self.requests: Counter[uuid.UUID] = Counter()
        self.received: Counter[uuid.UUID] = Counter()
        self.direct = direct
        self.endpoints: dict[uuid.UUID, layout.ServingEndpoint] = {}
        self._runner: web.AppRunner | None = None
        self._containers: dict[uuid.UUID, web.AppRunner] = {}
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
        """The node's agent and containers stop answering (they stay Running in ZooKeeper)."""
        runners = [self._runner, *self._containers.values()]
        self._runner, self._containers = None, {}
        for runner in runners:
            if runner is not None:
                await runner.cleanup()

    async def _start_container_http(self, cid: uuid.UUID) -> layout.ServingEndpoint:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, cid)

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", serve)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.ip, 0).start()
        self._containers[cid] = runner
        return layout.ServingEndpoint(self.ip, runner.addresses[0][1])

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
        if self.direct and cid not in self.endpoints:
            self.endpoints[cid] = await self._start_container_http(cid)
        if self.status is not None and cid in self.known:
            await self.set_status(cid, self.status)

    async def set_status(self, cid: uuid.UUID, status: ContainerStatus) -> None:
        path = layout.status_path(self.ip, cid)
        endpoint = self.endpoints.get(cid) if status == ContainerStatus.RUNNING else None
        data = layout.encode_status(status, endpoint)
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
        return await self._serve(request, cid, via_agent=True)

    async def _serve(
        self, request: web.Request, cid: uuid.UUID, via_agent: bool = False
    ) -> web.StreamResponse:
        """What container ``cid`` answers (through the agent or straight)."""
        self.requests[cid] += 1
        path = "/" + request.match_info.get("path", "")
        headers = {"X-Bismuth-Container-ID": str(cid)}
        if path == "/accel":
            return web.Response(
                text="the container's own body",
                headers={
                    "X-Accel-Redirect": "/internal",
                    "X-Accel-Buffering": "yes",
                    "X-Bismuth-Container-ID": "00000000-0000-0000-0000-000000000000",
                    "X-Bismuth-Not-Forwarded": "1",
                },
            )
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
        if path == "/digest":
            digest = hashlib.sha256()
            async for data in request.content.iter_any():
                digest.update(data)
                self.received[cid] += len(data)
            return web.json_response(
                {"length": self.received[cid], "sha256": digest.hexdigest()}, headers=headers
            )
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
                # what the container sees (through an agent: without the agent's credential)
                "headers": _seen_by_container(request) if via_agent else dict(request.headers),
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
