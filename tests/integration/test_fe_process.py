"""The ``bismuthfe`` command as an operator runs it: flags, config errors, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bismuth_core import operations
from bismuth_core.definition import parse_definition
from tests.support.waiting import eventually
from tests.support.zkserver import free_port

pytestmark = pytest.mark.integration

BISMUTHFE = str(Path(sys.executable).parent / "bismuthfe")


def definition():
    return parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": 0.1,
            "memory": 64 << 20,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
            "max_instances": 1,
            "routes": [{"hostname": "app.test"}],
        }
    )


def test_bad_flag_value_exits_2_naming_the_key():
    result = subprocess.run(
        [BISMUTHFE, "--admin-bind", "127.0.0.1:notaport"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "admin_bind" in result.stderr


async def test_sigterm_lets_in_flight_requests_finish(
    zk_server, zk_env, zk, standins, tmp_path, frontend_key_file
):
    agent = await standins.add()
    await operations.create_function(zk, definition())
    port, admin = free_port(), free_port()
    log = open(tmp_path / "bismuthfe.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            BISMUTHFE,
            "--zookeeper",
            zk_server.hosts,
            "--zookeeper-env",
            zk_env,
            "--bind",
            f"127.0.0.1:{port}",
            "--admin-bind",
            f"127.0.0.1:{admin}",
        ],
        env={
            **os.environ,
            "BISMUTH_AGENT_PORT": str(standins.port),
            "BISMUTH_FRONTEND_KEY_FILE": frontend_key_file,
        },
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers={"Host": "app.test"}) as http:

            async def status(path: str) -> int:
                async with http.get(url + path) as resp:
                    await resp.read()
                    return resp.status

            async def served() -> bool:
                return await status("/") == 200

            await eventually(served, timeout=30, what="serving")
            before = sum(agent.requests.values())
            slow = asyncio.create_task(status("/slow?seconds=2"))
            await eventually(lambda: sum(agent.requests.values()) > before, what="in flight")
            proc.send_signal(signal.SIGTERM)
            await eventually(lambda: _refused(url), what="listener closed")
            assert await slow == 200
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "bismuthfe.log").read_text()
    assert "finishing in-flight requests" in output
    assert "Traceback" not in output


async def _refused(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(url, headers={"Host": "x"}):
            return False
    except aiohttp.ClientConnectorError:
        return True
