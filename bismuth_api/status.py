"""``GET /status``: one document with what the status page shows, for the caller's eyes only.

A tenant token sees its own functions (each with its replicas, their status and node) and
the failures among them; an admin token sees every function and the nodes too (capacity,
what is reserved, whether the agent is alive). A failure is a replica whose agent reported
``Failed``, with the time that status was written; newest first, at most
:data:`MAX_FAILURES`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bismuth_core import cluster
from bismuth_core.layout import Backend
from bismuth_core.tenancy import Caller
from bismuth_core.zk import ZooKeeper

from .service import FunctionService

MAX_FAILURES = 50
FAILED = "Failed"


class StatusService:
    def __init__(self, zk: ZooKeeper, functions: FunctionService) -> None:
        self.zk = zk
        self.functions = functions

    async def snapshot(self, caller: Caller) -> dict[str, Any]:
        functions = await self.functions.list(caller)
        nodes = await self._nodes() if caller.is_admin else None
        return {
            "time": time.time(),
            "scope": "admin" if caller.is_admin else "tenant",
            "tenant": str(caller.tenant) if caller.tenant else None,
            "nodes": nodes,
            "functions": functions,
            "failures": await self._failures(functions),
        }

    async def _nodes(self) -> list[dict[str, object]]:
        views = (await cluster.read_nodes(self.zk, with_containers=False)).values()
        return [v.to_json() for v in sorted(views, key=lambda v: tuple(map(int, v.ip.split("."))))]

    async def _failures(self, functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        failed: dict[Backend, dict[str, Any]] = {}
        for doc in functions:
            for b in doc["backends"]:
                if b["status"] == FAILED:
                    backend = Backend(b["backend"]["ip"], uuid.UUID(b["backend"]["container_id"]))
                    failed[backend] = {
                        "function": doc["id"],
                        "routes": [r["hostname"] for r in doc["definition"]["routes"]],
                        "node": backend.ip,
                        "container_id": str(backend.container_id),
                        "status": FAILED,
                    }
        times = await cluster.read_status_times(self.zk, failed)
        found = [{**entry, "since": times.get(b)} for b, entry in failed.items()]
        found.sort(key=lambda f: f["since"] or 0.0, reverse=True)
        return found[:MAX_FAILURES]
