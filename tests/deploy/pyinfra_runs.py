"""Running pyinfra as an operator does, and reading what it reports: for the deploy tests."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without BISMUTH_* settings that would override the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BISMUTH_")}
    return {**env, **extra}


def run(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from the repository root (where pyinfra finds ``group_data/``)."""
    return subprocess.run(
        args,
        cwd=REPO,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def data_args(data: dict[str, str]) -> list[str]:
    return [arg for key, value in data.items() for arg in ("--data", f"{key}={value}")]


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def table(text: str, header: list[str]) -> dict[str, list[str]]:
    """A table pyinfra printed under ``header``: first cell -> the others."""
    rows: dict[str, list[str]] = {}
    started = False
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", re.sub(r"\x1b\[[0-9;]*m", "", line).strip())
        if cells == header:
            started = True
        elif started and len(cells) == len(header):
            rows[cells[0]] = cells[1:]
    return rows


def results_table(text: str) -> dict[str, list[str]]:
    """pyinfra's results table: operation name -> [hosts, success (changed), error, no change]."""
    return table(text, ["Operation", "Hosts", "Success", "Error", "No Change"])


def detected_changes(text: str) -> dict[str, list[str]]:
    """What a run without ``-y`` (or ``--dry``) detected: operation name (without its deploy's
    prefix) -> [change, conditional change], each ``-`` or ``<count> (<hosts>)``."""
    found = table(text, ["Operation", "Change", "Conditional Change"])
    return {name.rpartition(" | ")[2]: cells for name, cells in found.items()}


def changed_operations(table: dict[str, list[str]]) -> list[str]:
    return [name for name, cells in table.items() if name != "Grand total" and cells[1] != "-"]


def assert_no_changes(result: subprocess.CompletedProcess[str]) -> None:
    """The run succeeded and its results table lists every operation under No Change."""
    assert result.returncode == 0, output(result)
    table = results_table(result.stdout + result.stderr)
    assert "Grand total" in table, output(result)
    assert changed_operations(table) == []
    hosts, changed, errors, unchanged = table["Grand total"]
    assert (changed, errors) == ("-", "-")
    assert int(unchanged) == int(hosts) > 0
