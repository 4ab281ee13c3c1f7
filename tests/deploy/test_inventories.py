"""The inventories an operator starts from, as pyinfra reads them (no host is contacted)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.deploy.pyinfra_runs import output, run

PYINFRA = Path(sys.prefix) / "bin" / "pyinfra"
ROLES = ("zookeeper", "agents", "frontends", "api")


def inventory(path: str) -> list[dict[str, Any]]:
    """Every host with its groups and data (``pyinfra --json INVENTORY debug-inventory``)."""
    result = run([str(PYINFRA), "--json", path, "debug-inventory"], 60)
    assert result.returncode == 0, output(result)
    return list(json.loads(result.stdout))


def test_the_example_fleet_has_an_ensemble_nodes_two_frontends_and_an_api() -> None:
    hosts = inventory("inventories/example.py")
    roles = Counter(g for h in hosts for g in h["groups"] if g in ROLES)
    assert (roles["zookeeper"], roles["frontends"], roles["api"]) == (3, 2, 1)
    assert roles["agents"] >= 3
    for h in hosts:
        data = h["data"]
        assert data["node_ip"] == data["ssh_hostname"], h["name"]
        assert data["toolkit_install"] == "wheel"
        frontend = "frontends" in h["groups"]
        assert data["fe_bind"] == ("0.0.0.0:8000" if frontend else "127.0.0.1:8000")


def test_make_up_runs_everything_on_this_machine_from_the_checkout() -> None:
    (local,) = inventory("inventories/local.py")
    assert local["name"] == "@local"
    assert not set(local["groups"]) & set(ROLES)  # no role groups: one host runs everything
    assert local["data"]["toolkit_install"] == "checkout"
