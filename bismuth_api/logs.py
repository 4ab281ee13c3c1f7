"""``GET /function/<id>/logs``: container output read through each backend's agent.

Without ``follow`` the answer is plain text, each container's log under a ``==> <cid> <==``
header (as ``tail`` prints several files). With ``follow=true`` it is a Server-Sent Events
stream merging every container's live log: ``event: log`` with JSON data
``{"container_id": ..., "line": ...}``; it ends when every container's stream has ended.
An agent that cannot be reached is reported in the output, not as a failed request. The API
presents the cluster's agent credential to every agent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from aiohttp import ClientError, ClientResponse, ClientSession, web

from bismuth_core.credentials import AGENT_HEADER
from bismuth_core.layout import Backend


@dataclass(frozen=True)
class Agents:
    """How the API reaches agents' ``/logs``: its client, their port, the credential."""

    http: ClientSession
    port: int
    credential: str

    def logs(self, backend: Backend, follow: bool) -> AbstractAsyncContextManager[ClientResponse]:
        suffix = "?follow=true" if follow else ""
        url = f"http://{backend.ip}:{self.port}/logs/{backend.container_id}{suffix}"
        return self.http.get(url, headers={AGENT_HEADER: self.credential})


async def respond(
    request: web.Request, agents: Agents, backends: Sequence[Backend], follow: bool
) -> web.StreamResponse:
    if follow:
        return await _follow(request, agents, backends)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    for backend in backends:
        await response.write(f"==> {backend.container_id} ({backend.ip}) <==\n".encode())
        try:
            async with agents.logs(backend, False) as upstream:
                if upstream.status != 200:
                    await response.write(f"(agent answered {upstream.status})\n".encode())
                    continue
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except (ClientError, TimeoutError) as exc:
            await response.write(f"(agent unreachable: {exc!r})\n".encode())
    await response.write_eof()
    return response


async def _follow(
    request: web.Request, agents: Agents, backends: Sequence[Backend]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    lock = asyncio.Lock()

    async def emit(cid: str, line: str) -> None:
        data = json.dumps({"container_id": cid, "line": line})
        async with lock:
            await response.write(f"event: log\ndata: {data}\n\n".encode())

    async def pump(backend: Backend) -> None:
        cid = str(backend.container_id)
        try:
            async with agents.logs(backend, True) as upstream:
                if upstream.status != 200:
                    await emit(cid, f"(agent answered {upstream.status})")
                    return
                async for raw in upstream.content:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if line.startswith("data:"):
                        await emit(cid, line[5:].removeprefix(" "))
        except (ClientError, TimeoutError) as exc:
            await emit(cid, f"(agent unreachable: {exc!r})")

    await asyncio.gather(*(pump(b) for b in backends))
    await response.write_eof()
    return response
