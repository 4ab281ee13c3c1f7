"""The frontend's commands as an operator runs them: ``bismuthfe-nginx`` and ``bismuthfe``
as processes, their flags and config errors, and how each stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bismuth_core import operations
from bismuth_core.definition import parse_definition
from tests.support.frontend import DataPlane, frontend_config, private_directory
from tests.support.tomlconfig import write_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
BISMUTHFE = str(BIN / "bismuthfe")
BISMUTHFE_NGINX = str(BIN / "bismuthfe-nginx")


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


@pytest.mark.parametrize("command", [BISMUTHFE, BISMUTHFE_NGINX])
def test_bad_flag_value_exits_2_naming_the_key(command):
    result = subprocess.run(
        [command, "--admin-bind", "127.0.0.1:notaport"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "admin_bind" in result.stderr


def test_bad_config_file_value_exits_2_naming_the_key(tmp_path, frontend_key_file):
    config = tmp_path / "fe.toml"
    config.write_text(f'run_dir = "relative/dir"\nfrontend_key_file = "{frontend_key_file}"\n')
    result = subprocess.run(
        [BISMUTHFE_NGINX, "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "run_dir" in result.stderr


async def test_controller_as_a_process_fills_nginx_and_stops_on_sigterm(
    zk_server, zk_env, zk, standins, tmp_path, frontend_key_file
):
    await standins.add()
    await operations.create_function(zk, definition())
    directory = private_directory()
    config = frontend_config(
        directory,
        zookeeper=zk_server.hosts,
        zookeeper_env=zk_env,
        agent_port=standins.port,
        frontend_key_file=frontend_key_file,
    )
    plane = DataPlane(config, directory)
    plane.start()
    log = open(tmp_path / "bismuthfe.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [BISMUTHFE, "--config", str(write_config(config, tmp_path / "fe.toml"))],
        env={k: v for k, v in os.environ.items() if not k.startswith("BISMUTH_")},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        async with aiohttp.ClientSession(headers={"Host": "app.test"}) as http:

            async def served() -> bool:
                async with http.get(plane.url + "/") as resp:
                    return resp.status == 200

            await eventually(served, timeout=30, what="served")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert await served()  # nginx keeps its table without its controller
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        await plane.control.close()
        plane.stop()
    output = (tmp_path / "bismuthfe.log").read_text()
    assert "nginx: route table" in output and "nginx keeps serving" in output
    assert "Traceback" not in output
