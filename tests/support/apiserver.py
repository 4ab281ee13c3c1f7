"""A bismuth-api instance served in-process on a free loopback port, for tests and benches."""

from __future__ import annotations

from aiohttp import web

from bismuth_api.app import build_deps, create_app
from bismuth_api.config import ApiConfig
from bismuth_core.zk import ZooKeeper
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


class Api:
    """One bismuth-api with its own ZooKeeper session; ``stop`` ends both."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.zk = ZooKeeper(config.zookeeper, config.zookeeper_env, session_timeout=4.0)
        self.deps = build_deps(config, self.zk)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        await self.zk.start()
        self.runner = web.AppRunner(create_app(self.deps), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
            self.runner = None
            await self.zk.stop()
