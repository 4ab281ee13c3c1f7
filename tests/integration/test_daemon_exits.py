"""Every daemon's command as an operator meets it: one message line and the same exit codes.

A bad configuration value exits 2 naming the key; a dependency that cannot be reached at
start (here: ZooKeeper on a port nobody listens on) exits 1 saying so. No traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.zkserver import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DAEMONS = ["bismuth-api", "bismuthfe", "bismuthd"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("daemon", "args", "key"),
    [
        *((d, ["--zookeeper-env", "Not An Env"], "zookeeper_env") for d in DAEMONS),
        ("bismuth-provider", [], "function_id"),  # its settings come from the agent
    ],
)
def test_a_bad_config_value_exits_2_naming_the_key(daemon: str, args: list[str], key: str) -> None:
    result = run(str(BIN / daemon), *args)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("daemon", "setting"),
    [
        ("bismuth-api", "cluster_key_file"),
        ("bismuthd", "cluster_key_file"),
        ("bismuthfe", "frontend_key_file"),
        ("bismuthfe-nginx", "frontend_key_file"),
    ],
)
def test_a_daemon_without_its_key_exits_2_naming_the_setting(daemon: str, setting: str) -> None:
    """The credentials daemons check each other with derive from the cluster key."""
    result = run(str(BIN / daemon), "--zookeeper", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert setting in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_zookeeper_at_start_exits_1(tmp_path: Path, cluster_key_file: str) -> None:
    """Every daemon starts through the same runner; the API's connect timeout is short."""
    config = tmp_path / "api.toml"
    config.write_text(f"connect_timeout = 1.0\ncluster_key_file = {cluster_key_file!r}\n")
    result = run(
        str(BIN / "bismuth-api"), "--config", str(config), "--zookeeper", f"127.0.0.1:{free_port()}"
    )
    assert result.returncode == 1, result.stderr
    assert "ZooKeeper" in result.stderr and "Traceback" not in result.stderr
