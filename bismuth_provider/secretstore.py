"""Secrets of one function, asked of the agent that started this provider.

The provider holds no cluster key and no ZooKeeper session: each read is one request to
the agent over its providers' socket (``secrets_socket``), authenticated by the socket
itself (the agent knows this process) and by the container's token. The agent opens the
sealed value on every read, so a secret changed through the API is seen at once.
"""

from __future__ import annotations

import aiohttp

from bismuth_core.errors import NotFound, Unavailable
from bismuth_core.secrets import validate_secret_name

TIMEOUT = aiohttp.ClientTimeout(total=10.0)


class SecretReader:
    def __init__(self, socket_path: str, token: str) -> None:
        self._socket, self._token = socket_path, token
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=self._socket)
            self._session = aiohttp.ClientSession(connector=connector, timeout=TIMEOUT)
        return self._session

    async def read(self, name: str) -> bytes:
        """The secret's value; ``NotFound`` if the function has no secret of that name."""
        validate_secret_name(name)
        if not self._socket:
            raise Unavailable("secrets: this provider has no agent to ask (secrets_socket)")
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._client().get(f"http://agent/secrets/{name}", headers=headers) as r:
                if r.status == 200:
                    return await r.read()
                why = await _error(r)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"secrets: the agent does not answer: {exc!r}") from None
        if r.status == 404:
            raise NotFound(f"no secret named {name!r}")
        raise Unavailable(f"secrets: {why}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _error(response: aiohttp.ClientResponse) -> str:
    try:
        return str((await response.json())["error"])
    except (aiohttp.ContentTypeError, ValueError, KeyError, TypeError):
        return f"the agent answered {response.status}"
