"""The frontend for tests: a real nginx (started by ``bismuthfe-nginx``) and its controller.

Each :class:`DataPlane` gets its own ports, run directory (control socket, pid file) and temp
directory, so any number run next to each other and next to a cluster's own frontend. The
controller (:class:`bismuth_fe.server.Frontend`) runs in the test's event loop, built with
the same configuration. Only PIDs this module started are ever signalled.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bismuth_core.definition import FunctionDefinition, parse_definition
from bismuth_fe.config import FrontendConfig
from bismuth_fe.control import NginxControl
from bismuth_fe.server import Frontend
from tests.support.tomlconfig import write_config
from tests.support.waiting import eventually
from tests.support.zkserver import free_port

BISMUTHFE_NGINX = str(Path(sys.executable).parent / "bismuthfe-nginx")
STOP_TIMEOUT = 30.0


class DataPlane:
    """One nginx of the frontend, run as an operator's service manager runs it."""

    def __init__(self, config: FrontendConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.config_file = write_config(config, directory / "fe.toml")
        self.log_file = directory / "nginx.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.control = NginxControl(config.control_socket)

    @property
    def url(self) -> str:
        host, port = self.config.public_address()
        return f"http://{host}:{port}"

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [BISMUTHFE_NGINX, "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("BISMUTH_")},
            )
        deadline = time.monotonic() + timeout
        while not (self.config.control_socket.exists() and len(self.worker_pids()) >= 1):
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start within {timeout}s: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    @property
    def master_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> set[int]:
        """The master's children (its workers), from /proc."""
        if self.process is None or self.process.poll() is not None:
            return set()
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(p) for p in children.read_text().split()}
        except OSError:
            return set()

    def stop(self, sig: int = signal.SIGQUIT) -> int:
        """Stop nginx (SIGQUIT: gracefully) and return its exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class FrontendUnderTest:
    """nginx plus its controller, as ``make up`` runs them; ``url`` is nginx's public side."""

    def __init__(self, plane: DataPlane, controller: Frontend) -> None:
        self.plane = plane
        self.controller = controller

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def admin_url(self) -> str:
        return self.controller.admin_url

    @property
    def deps(self) -> Any:
        return self.controller.deps

    @property
    def config(self) -> FrontendConfig:
        return self.plane.config


def frontend_config(directory: Path, **settings: Any) -> FrontendConfig:
    """A private configuration: free ports, run and temp dirs under ``directory``."""
    base = FrontendConfig(
        bind=f"127.0.0.1:{free_port()}",
        admin_bind=f"127.0.0.1:{free_port()}",
        run_dir=str(directory / "run"),
        temp_dir=str(directory / "tmp"),
        workers=1,
        worker_connections=1024,
        shutdown_timeout=5.0,
        sync_interval=0.2,
        log_level="info",
    )
    return replace(base, **settings)


def private_directory() -> Path:
    """A directory nginx's workers (``www-data``) can reach, unlike pytest's 0700 tmp."""
    path = Path(tempfile.mkdtemp(prefix="bismuth-fe-"))
    path.chmod(0o755)
    return path


StartFrontend = Callable[..., Awaitable[FrontendUnderTest]]


@pytest.fixture
def frontend_agent_port() -> int:
    """The agents' port the frontends of a test use (a module with stand-ins overrides it)."""
    return 8001


@pytest.fixture
async def start_frontend(
    zk_server, zk_env, frontend_agent_port, frontend_key_file
) -> AsyncIterator[StartFrontend]:
    """Start nginx and its controller with the given settings (after the test: both stop)."""
    planes: list[DataPlane] = []
    controllers: list[Frontend] = []
    directories: list[Path] = []

    async def start(**settings: Any) -> FrontendUnderTest:
        directory = private_directory()
        directories.append(directory)
        settings = {
            "zookeeper": zk_server.hosts,
            "zookeeper_env": zk_env,
            "agent_port": frontend_agent_port,
            "frontend_key_file": frontend_key_file,
            **settings,
        }
        config = frontend_config(directory, **settings)
        plane = DataPlane(config, directory)
        plane.start()
        planes.append(plane)
        controller = Frontend(config)
        await controller.start()
        controllers.append(controller)
        fe = FrontendUnderTest(plane, controller)
        await eventually(lambda: controller.deps.controller.state.synced, what="nginx synced")
        return fe

    yield start
    for controller in reversed(controllers):
        await controller.stop()
    for plane in planes:
        await plane.control.close()
        plane.stop(signal.SIGTERM)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def nginx_pids(fe: FrontendUnderTest) -> tuple[int, frozenset[int]]:
    return fe.plane.master_pid, frozenset(fe.plane.worker_pids())


def server_function(
    hosts: tuple[str, ...] = ("app.test",), max_instances: int = 1
) -> FunctionDefinition:
    """A Server-mode function answering ``hosts`` (stand-in agents play its containers)."""
    return parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": 0.1,
            "memory": 64 << 20,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
            "max_instances": max_instances,
            "routes": [{"hostname": h} for h in hosts],
        }
    )


class RequestLoop:
    """Clients calling ``url`` with ``host`` back to back until stopped; counts outcomes and
    which container answered (and the first answers that were not 200)."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, host: str = "app.test", workers: int = 4
    ) -> None:
        self.http, self.url, self.host = http, url, host
        self.outcomes: Counter[int | str] = Counter()
        self.served_by: Counter[str] = Counter()
        self.failures: list[tuple[int, dict[str, str], bytes]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(workers)]

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.http.get(self.url, headers={"Host": self.host}) as resp:
                    body = await resp.read()
                    self.outcomes[resp.status] += 1
                    self.served_by[resp.headers.get("X-Bismuth-Container-ID", "")] += 1
                    if resp.status != 200 and len(self.failures) < 10:
                        self.failures.append((resp.status, dict(resp.headers), body[:300]))
            except aiohttp.ClientError as exc:
                self.outcomes[type(exc).__name__] += 1

    async def grow(self, count: int, timeout: float = 60) -> None:
        mark = self.total
        await eventually(lambda: self.total >= mark + count, timeout=timeout, what="requests")

    async def stop(self) -> Counter[int | str]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes
