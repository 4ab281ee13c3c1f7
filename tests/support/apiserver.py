"""A bismuth-api instance served in-process on a free loopback port, for tests and benches."""

from __future__ import annotations

from aiohttp import web

from bismuth_api.app import build_deps, connect, create_app
from bismuth_api.config import ApiConfig
from bismuth_core import operations, tenancy
from bismuth_core.tokens import Scope
from tests.support.waiting import eventually
from tests.support.zkserver import free_port


def definition(**changes: object) -> dict[str, object]:
    """A valid function definition in contract form, with ``changes`` applied."""
    base: dict[str, object] = {
        "image": "bismuth.local/python:3.11",
        "repo": None,
        "svc_group_id": None,
        "cpu": 0.5,
        "memory": 134217728,
        "svc_quotas": None,
        "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
        "max_instances": 1,
        "routes": [{"hostname": "app.example"}],
    }
    base.update(changes)
    return base


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """One bismuth-api with its own ZooKeeper session; ``stop`` ends both.

    It bootstraps its environment as ``bismuth-api`` does at start (the ``default`` tenant,
    functions without an owner adopted) and holds an admin token, ``admin_token``.
    """

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.zk = connect(config, session_timeout=4.0)  # as bismuth-api connects
        self.deps = build_deps(config, self.zk)
        self.runner: web.AppRunner | None = None
        self.admin_token = ""

    @property
    def admin(self) -> dict[str, str]:
        """Headers of a request made as the operator."""
        return bearer(self.admin_token)

    async def tenant(self, name: str) -> tuple[tenancy.Tenant, str]:
        """A new tenant and its first token."""
        made, issued = await tenancy.create_tenant(self.zk, name)
        assert issued is not None
        return made, issued.text

    async def sees_nodes(self, *ips: str) -> None:
        """Wait until the API's fleet cache would place on every one of ``ips``: it learns
        of nodes from watches, so a node registered a moment ago may not be there yet."""

        def ranked() -> bool:
            return set(ips) <= {ip for _, ip in self.deps.fleet.ranked()}

        await eventually(ranked, what=f"the API to see nodes {', '.join(ips)}")

    async def start(self) -> None:
        await self.zk.start()
        await operations.bootstrap(self.zk)
        await tenancy.bootstrap(self.zk)
        if not self.admin_token:
            self.admin_token = (await tenancy.issue_token(self.zk, None, Scope.ADMIN))[1].text
        self.runner = web.AppRunner(create_app(self.deps), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
            self.runner = None
            await self.zk.stop()
