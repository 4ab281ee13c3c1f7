"""Function secrets for the providers, answered by the agent over a private socket.

Providers hold no cluster key and no ZooKeeper session: a provider asks the agent for one
secret of its own function at a time, ``GET /secrets/<name>`` on the unix socket
``<agent state dir>/providers.sock`` (group-owned by the providers' group, mode 0660), with
its container's token as bearer. The agent knows who is asking from the socket itself
(``SO_PEERCRED``): only the very process it started as a container's provider gets that
container function's secrets, and only with that container's token; anything else is
``403``. The agent reads the sealed value from ZooKeeper and opens it with the cluster key
on every request, so a secret changed through the API is seen at once. Answers: ``200``
with the value, ``404`` for a secret that does not exist, ``503`` (JSON, saying why) without
a cluster key, without ZooKeeper, or for a value sealed with another key.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bismuth_core import operations
from bismuth_core.errors import Forbidden, Unavailable
from bismuth_core.secrets import SecretBox, validate_secret_name
from bismuth_core.weberrors import error_middleware
from bismuth_core.zk import ZooKeeper

log = logging.getLogger(__name__)

SOCKET = "providers.sock"


@dataclass(frozen=True)
class Asker:
    """A provider the agent started: its container, function and token."""

    container_id: uuid.UUID
    function_id: uuid.UUID
    token: str


Identify = Callable[[int], Asker | None]  # provider PID -> what it may ask for


class SecretSource:
    """Opens function secrets: sealed values from ZooKeeper, the cluster key of this node."""

    def __init__(self, zk: ZooKeeper, box: SecretBox | None) -> None:
        self.zk, self.box = zk, box

    async def read(self, fid: uuid.UUID, name: str) -> bytes:
        if self.box is None:
            raise Unavailable("secrets: this node has no cluster key (cluster_key_file)")
        sealed = await operations.read_sealed_secret(self.zk, fid, name)
        return self.box.open(fid, name, sealed)


def peer_pid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", raw)
    return int(pid)


SOURCE = web.AppKey("source", SecretSource)
IDENTIFY: web.AppKey[Identify] = web.AppKey("identify")


async def secret(request: web.Request) -> web.Response:
    pid = peer_pid(request)
    asker = request.app[IDENTIFY](pid) if pid is not None else None
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if asker is None or not hmac.compare_digest(bearer.encode(), asker.token.encode()):
        log.warning("secret asked for by process %s, which is no container's provider", pid)
        raise Forbidden("only a container's own provider may ask for its function's secrets")
    name = validate_secret_name(request.match_info["name"])
    value = await request.app[SOURCE].read(asker.function_id, name)
    return web.Response(body=value, content_type="application/octet-stream")


def create_app(source: SecretSource, identify: Identify) -> web.Application:
    app = web.Application(middlewares=[error_middleware()])
    app[SOURCE], app[IDENTIFY] = source, identify
    app.router.add_get("/secrets/{name}", secret)
    return app


@contextlib.asynccontextmanager
async def serving(
    path: Path, source: SecretSource, identify: Identify, group: int | None
) -> AsyncIterator[None]:
    """Serve on the unix socket ``path`` (readable by ``group`` only) for the ``with``."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by an agent that was killed
    runner = web.AppRunner(create_app(source, identify), access_log=None)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        os.chown(path, 0, group if group is not None else 0)
        path.chmod(0o660 if group is not None else 0o600)
        yield
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
