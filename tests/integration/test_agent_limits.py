"""One tenant cannot exhaust the agent: memory, descriptors and other functions' service.

The agent runs as its own process (``python -m bismuth_agent.main``) so that its memory
(VmRSS) and open descriptors can be read from /proc; the functions are Python programs in
the base image. Each hostile function is turned on the agent while a calm one is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bismuth_core import operations
from bismuth_core.definition import parse_definition
from tests.support.agenthost import AgentProcess, httpd, running_backend, start_agent
from tests.support.clusterkey import AGENT_AUTH
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MiB = 1 << 20
HUNG = (
    "import socket, time\n"
    "server = socket.create_server(('0.0.0.0', 8080), backlog=512)\n"
    "held = []\n"
    "while True:\n"
    "    held.append(server.accept())  # never answers\n"
)
CALM = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'calm')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)
FLOOD = "import sys\nsys.stdout.buffer.write(b'x' * (64 << 20))\n"
SINK = "import sys\nn = len(sys.stdin.buffer.read())\nprint(n)\n"


def function(mode: dict[str, object], memory: int = 96 * MiB):
    return parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": 0.5,
            "memory": memory,
            "invoke_mode": mode,
            "routes": [],
        }
    )


def server(program: str) -> dict[str, object]:
    return {"Server": [["/usr/bin/python3", "-c", program], 8080]}


def executable(program: str) -> dict[str, object]:
    return {"Executable": ["/usr/bin/python3", "-c", program]}


def usage(pid: int) -> tuple[int, int]:
    """(VmRSS in bytes, open descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if "VmRSS" in line)
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
async def agent_process(zk, pynode, tmp_path) -> AsyncIterator[AgentProcess]:
    config = dataclasses.replace(
        pynode,
        exec_timeout=10.0,
        exec_concurrency=4,
        proxy_connect_timeout=2.0,
        proxy_idle_timeout=3.0,
        proxy_max_connections=8,
    )
    process = AgentProcess(config, tmp_path)
    await process.start(zk)
    yield process
    await process.stop()
    # the next agent (the fixture's sweep) must not find containers it was not told about
    running = await start_agent(config)
    await running.stop()


async def deploy(zk, definition) -> str:
    fid = await operations.create_function(zk, definition)
    backend = await eventually(lambda: running_backend(zk, fid), timeout=90, what="Running")
    return str(backend.container_id)


class Calm:
    """Calls the calm function over and over while something else happens; counts answers."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.ok, self.failed = http, url, 0, 0
        self.task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                async with self.http.get(self.url) as r:
                    if r.status == 200 and await r.read() == b"calm":
                        self.ok += 1
                    else:
                        self.failed += 1
            except aiohttp.ClientError:
                self.failed += 1
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def body(size: int) -> AsyncIterator[bytes]:
    chunk = b"b" * (64 << 10)
    for _ in range(size // len(chunk)):
        yield chunk


async def test_hostile_functions_leave_the_agent_bounded_and_others_served(zk, agent_process):
    agent = agent_process
    calm_id = await deploy(zk, function(server(CALM)))
    hung_id = await deploy(zk, function(server(HUNG)))
    flood_id = await deploy(zk, function(executable(FLOOD), memory=256 * MiB))
    sink_id = await deploy(zk, function(executable(SINK)))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=AGENT_AUTH) as http:
        calm = Calm(http, f"{agent.url}/invoke/{calm_id}/")
        await eventually(lambda: calm.ok > 0, what="the calm function answering")
        rss0, fds0 = usage(agent.pid)

        # a hung container: 40 requests, at most 8 connections to it, each cut off
        async def hung_call() -> int:
            async with http.get(f"{agent.url}/invoke/{hung_id}/") as r:
                return r.status

        hung = await asyncio.gather(*(hung_call() for _ in range(40)))
        assert set(hung) <= {503, 504} and hung.count(504) >= 8

        # a program that writes 64 MiB to stdout: stopped at exec_max_output
        async with http.post(f"{agent.url}/invoke/{flood_id}", data=b"") as r:
            assert r.status == 502
            assert "exec_max_output" in (await r.json())["error"]

        # 300 concurrent 9 MB bodies to one Executable function
        peak = [0, 0]

        async def sample() -> None:
            while True:
                rss, fds = usage(agent.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], fds)
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())

        async def sink_call() -> int:
            size = 9 * MiB
            headers = {"Content-Length": str(size)}
            try:
                url = f"{agent.url}/invoke/{sink_id}"
                async with http.post(url, data=body(size), headers=headers) as r:
                    await r.read()
                    return r.status
            except aiohttp.ClientError:
                return 0  # refused while still sending

        sinks = await asyncio.gather(*(sink_call() for _ in range(300)))
        sampler.cancel()
        await calm.stop()
    # 408: a body that did not arrive within exec_timeout (a loaded host is slow to send)
    assert sinks.count(200) >= 4 and set(sinks) <= {200, 408, 503, 0}
    assert calm.ok > 10 and calm.failed == 0, (calm.ok, calm.failed)
    # 2.7 GB were sent; the agent holds a few chunks of each body (measured: ~30 MiB more)
    assert peak[0] - rss0 < 100 * MiB, f"agent RSS grew {(peak[0] - rss0) / MiB:.0f} MiB"
    # one per client connection, at most 8 to the hung container, and a few of its own
    assert peak[1] - fds0 < 300 + 8 + 60, f"agent descriptors grew by {peak[1] - fds0}"
    _, fds_after = await eventually(
        lambda: (lambda u: u if u[1] <= fds0 + 10 else None)(usage(agent.pid)),
        timeout=30,
        what="descriptors back to their level",
    )
    assert fds_after <= fds0 + 10


async def test_the_log_cap_holds_while_a_container_writes_as_fast_as_it_can(zk, node):
    cap = 256 << 10
    running = await start_agent(dataclasses.replace(node, log_max_bytes=cap))
    try:
        noisy = ["/bin/sh", "-c", "yes 0123456789abcdef & exec httpd -f -p 8080 -h /etc"]
        fid = await operations.create_function(zk, httpd(invoke_mode={"Server": [noisy, 8080]}))
        backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
        current = running.agent.logs.path(backend.container_id)
        older = current.with_suffix(".log.1")
        # Each rotation renames the log onto the older half: a file that changed its name
        # then (inode numbers alone are reused: two files can take turns with one pair).
        rotations: set[tuple[int, int]] = set()
        largest = 0

        def rotated_thrice() -> bool:
            nonlocal largest
            for path in (current, older):
                with contextlib.suppress(FileNotFoundError):
                    info = path.stat()
                    largest = max(largest, info.st_size)
                    if path == older:
                        rotations.add((info.st_ino, info.st_ctime_ns))
            return len(rotations) >= 3

        await eventually(rotated_thrice, timeout=30, interval=0.01, what="three rotations")
        assert largest <= cap // 2  # each half, at every look: the cap holds as it is written
        assert b"0123456789abcdef\n" in running.agent.logs.read(backend.container_id)
    finally:
        await running.stop()
