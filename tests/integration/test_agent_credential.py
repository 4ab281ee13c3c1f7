"""Only the cluster's own daemons reach containers through bismuthd: a real agent, a real
frontend and a real API, all on loopback, with the credentials the deploy gives them.

A caller on the agent's address without the cluster's agent credential (or with a wrong
one) gets 401 on /invoke, /logs and /metrics; the frontend's nginx sends it with the
requests it passes through agents (Executable mode; whatever a client puts in the
credential's header), and the API's log proxy too.
"""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from bismuth_api.config import ApiConfig
from bismuth_core import operations
from bismuth_core.credentials import AGENT_HEADER
from tests.support.agenthost import httpd, running_backend
from tests.support.apiserver import Api
from tests.support.clusterkey import AGENT_AUTH
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def frontend_agent_port(node) -> int:
    return node.port


async def test_only_the_clusters_daemons_reach_the_agent(
    zk, agent, zk_server, zk_env, start_frontend, cluster_key_file
):
    hostname = f"cred{uuid.uuid4().hex[:6]}.test"
    fid = await operations.create_function(zk, httpd(routes=[{"hostname": hostname}]))
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    base = f"{agent.url}"
    cid = backend.container_id
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {AGENT_HEADER: "guess"}, {"Authorization": "Bearer guess"}):
            for path in (f"/invoke/{cid}/hello", f"/logs/{cid}", "/metrics"):
                async with http.get(base + path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await resp.json())["error"]
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/metrics", headers=AGENT_AUTH) as resp:
            assert resp.status == 200

        fe = await start_frontend()
        # a client's own guess at the credential is replaced by the frontend's (a Server-mode
        # container is reached straight, and never sees one)
        headers = {"Host": hostname, AGENT_HEADER: "client guess"}
        async with http.get(f"{fe.url}/hello", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.text() == "hello from layer 2\n"
        # an Executable-mode function goes through the agent, with nginx's credential
        shout = f"exec{uuid.uuid4().hex[:6]}.test"
        executable = httpd(
            invoke_mode={"Executable": ["/bin/busybox", "tr", "a-z", "A-Z"]},
            routes=[{"hostname": shout}],
        )
        await operations.create_function(zk, executable)

        async def shouted() -> bool:
            headers = {"Host": shout, AGENT_HEADER: "client guess"}
            async with http.post(f"{fe.url}/", data=b"shout", headers=headers) as resp:
                return resp.status == 200 and await resp.read() == b"SHOUT"

        await eventually(shouted, timeout=30, what="the program's answer through the agent")

        api = Api(
            ApiConfig(
                zookeeper=zk_server.hosts,
                zookeeper_env=zk_env,
                agent_port=agent.config.port,
                cluster_key_file=cluster_key_file,
            )
        )
        await api.start()
        try:
            url = f"{api.url}/function/{fid}/logs"
            async with http.get(url, headers=api.admin) as resp:
                text = await resp.text()
            assert resp.status == 200 and f"==> {cid}" in text
            assert "agent answered" not in text, text
        finally:
            await api.stop()
