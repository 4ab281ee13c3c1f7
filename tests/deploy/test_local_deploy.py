"""The single-node deploy, for real: ``pyinfra -y inventories/local.py deploy.py`` on this machine.

Every path points into a temporary directory and every port is a free loopback port, with an
environment of its own, so the operator's cluster (``make up``) is never touched. Needs root,
Debian's zookeeper and supervisor (``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.support.waiting import eventually
from tests.support.zkserver import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.prefix) / "bin"
DEPLOY_TIMEOUT = 240.0
UP_TIMEOUT = 30.0
PROGRAMS = ("bismuth-zookeeper", "bismuth-api", "bismuth-fe")


@dataclass
class LocalCluster:
    """Settings of one test deploy, and how to run it and look at what it brought up."""

    root: Path
    env: str = field(default_factory=lambda: "deploy" + uuid.uuid4().hex[:12])
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("zookeeper", "peer", "election", "api", "fe", "fe_admin", "agent"):
            self.ports[name] = free_port()

    @property
    def zookeeper(self) -> str:
        return f"127.0.0.1:{self.ports['zookeeper']}"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / "etc" / "supervisord.conf"

    def data(self) -> dict[str, str]:
        p = self.ports
        return {
            "etc_dir": str(self.root / "etc"),
            "var_dir": str(self.root / "var"),
            "log_dir": str(self.root / "log"),
            "run_dir": str(self.root / "run"),
            "zookeeper_env": self.env,
            "zookeeper_port": str(p["zookeeper"]),
            "zookeeper_peer_port": str(p["peer"]),
            "zookeeper_election_port": str(p["election"]),
            "api_bind": f"127.0.0.1:{p['api']}",
            "fe_bind": f"127.0.0.1:{p['fe']}",
            "fe_admin_bind": f"127.0.0.1:{p['fe_admin']}",
            "agent_port": str(p["agent"]),
            "service_manager": "supervisord",
        }

    def deploy(self) -> subprocess.CompletedProcess[str]:
        args = [str(VENV_BIN / "pyinfra"), "-y", "inventories/local.py", "deploy.py"]
        for key, value in self.data().items():
            args += ["--data", f"{key}={value}"]
        return subprocess.run(
            args,
            cwd=REPO,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT,
        )

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["supervisorctl", "-c", str(self.supervisord_conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def supervisord_pid(self) -> int | None:
        pidfile = self.root / "run" / "supervisord.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().strip())
        return None

    def shutdown(self) -> None:
        """Stop the test's supervisord (and its daemons) if it still runs."""
        if self.supervisord_pid() is not None:
            self.supervisorctl("shutdown")


def clean_env() -> dict[str, str]:
    """This process's environment without BISMUTH_* settings that would override the test's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BISMUTH_")}


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def results_table(text: str) -> dict[str, list[str]]:
    """pyinfra's results table: operation name -> [hosts, success (changed), error, no change]."""
    rows: dict[str, list[str]] = {}
    started = False
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", re.sub(r"\x1b\[[0-9;]*m", "", line).strip())
        if cells[:2] == ["Operation", "Hosts"]:
            started = True
        elif started and len(cells) == 5:
            rows[cells[0]] = cells[1:]
    return rows


def changed_operations(table: dict[str, list[str]]) -> list[str]:
    return [name for name, cells in table.items() if name != "Grand total" and cells[1] != "-"]


def four_letter_word(port: int, word: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(word)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def get(url: str, host: str | None = None) -> tuple[int, str, str]:
    headers = {"Host": host} if host else {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, response.content_type, await response.text()


async def answers_200(url: str) -> bool:
    status, _, _ = await get(url)
    assert status == 200, f"{url} answered {status}"
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A single-node cluster deployed once for this module; shut down at the end in any case."""
    cluster = LocalCluster(tmp_path_factory.mktemp("deploy"))
    first = cluster.deploy()
    try:
        assert first.returncode == 0, output(first)
        yield cluster
    finally:
        cluster.shutdown()


async def test_deploy_brings_up_zookeeper_api_and_frontend(cluster: LocalCluster) -> None:
    assert four_letter_word(cluster.ports["zookeeper"], b"ruok") == b"imok"
    api = f"http://127.0.0.1:{cluster.ports['api']}"
    fe = f"http://127.0.0.1:{cluster.ports['fe']}"
    admin = f"http://127.0.0.1:{cluster.ports['fe_admin']}"
    await eventually(lambda: answers_200(f"{api}/healthz"), UP_TIMEOUT, what="API /healthz")
    await eventually(lambda: answers_200(f"{admin}/healthz"), UP_TIMEOUT, what="frontend /healthz")

    status, content_type, body = await get(f"{fe}/hello", host="nobody.invalid")
    assert (status, content_type) == (404, "application/json"), body
    assert "error" in json.loads(body)


async def test_bismuthctl_lists_this_node_enabled(cluster: LocalCluster) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            str(VENV_BIN / "bismuthctl"),
            "--zookeeper",
            cluster.zookeeper,
            "--zookeeper-env",
            cluster.env,
            "--json",
            "nodes",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, output(result)
    listing = json.loads(result.stdout)
    nodes = listing["nodes"] if isinstance(listing, dict) else listing
    assert [(n["ip"], n["enabled"]) for n in nodes] == [("127.0.0.1", True)]


def test_second_deploy_reports_no_changes(cluster: LocalCluster) -> None:
    again = cluster.deploy()
    assert again.returncode == 0, output(again)
    table = results_table(again.stdout + again.stderr)
    assert "Grand total" in table, output(again)
    assert changed_operations(table) == []
    hosts, changed, errors, unchanged = table["Grand total"]
    assert (changed, errors) == ("-", "-")
    assert int(unchanged) == int(hosts) > 0


async def test_shutting_down_supervisord_stops_every_daemon(cluster: LocalCluster) -> None:
    supervisord = cluster.supervisord_pid()
    assert supervisord is not None and is_running(supervisord)
    pids = cluster.supervisorctl("pid", *PROGRAMS).stdout.split()
    assert len(pids) == len(PROGRAMS) and all(p.isdigit() and int(p) > 0 for p in pids), pids
    daemons = [supervisord, *map(int, pids)]

    result = cluster.supervisorctl("shutdown")
    assert result.returncode == 0, output(result)

    await eventually(
        lambda: not any(is_running(pid) for pid in daemons), UP_TIMEOUT, what="daemons gone"
    )
    with pytest.raises(ConnectionRefusedError):
        four_letter_word(cluster.ports["zookeeper"], b"ruok")
