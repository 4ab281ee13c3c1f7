"""Secrets of one function, read from ZooKeeper and opened with the cluster key.

The control plane stores each secret sealed (``bismuth_core.secrets``); the provider opens
it on every read, so a secret changed through the API is seen at once. The ZooKeeper
session is made on the first read, not at start: most containers never ask for a secret,
and a provider must not need ZooKeeper to serve key/value pairs and blobs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from bismuth_core import layout
from bismuth_core.errors import NotFound, Unavailable
from bismuth_core.secrets import SecretBox, validate_secret_name

if TYPE_CHECKING:
    from bismuth_core.zk import ZooKeeper

CONNECT_TIMEOUT = 5.0


class SecretReader:
    def __init__(
        self, zookeeper: str, env: str, box: SecretBox | None, function_id: uuid.UUID
    ) -> None:
        self._zookeeper, self._env = zookeeper, env
        self._box = box
        self._function_id = function_id
        self._zk: ZooKeeper | None = None
        self._connecting = asyncio.Lock()

    async def _session(self) -> ZooKeeper:
        async with self._connecting:
            if self._zk is None:
                from bismuth_core.zk import ZooKeeper  # kazoo: only for providers that need it

                zk = ZooKeeper(self._zookeeper, self._env)
                await zk.start(timeout=CONNECT_TIMEOUT)
                self._zk = zk
            return self._zk

    async def read(self, name: str) -> bytes:
        """The secret's value; ``NotFound`` if the function has no secret of that name."""
        validate_secret_name(name)
        if self._box is None:
            raise Unavailable("secrets: this host has no cluster key configured")
        zk = await self._session()
        found = await zk.get_or_none(layout.secret_path(self._function_id, name))
        if found is None:
            raise NotFound(f"no secret named {name!r}")
        return self._box.open(self._function_id, name, found[0])

    async def close(self) -> None:
        if self._zk is not None:
            await self._zk.stop()
