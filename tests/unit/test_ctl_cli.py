"""``bismuthctl`` without ZooKeeper: argument parsing, configuration, exit codes, tables."""

from __future__ import annotations

import argparse
import json

import pytest

from bismuth_core.errors import (
    BismuthError,
    Conflict,
    Forbidden,
    InsufficientCapacity,
    InvalidDefinition,
    NotFound,
    Unauthorized,
    Unavailable,
)
from bismuth_ctl.commands import ipv4, seconds
from bismuth_ctl.main import CtlConfig, UsageError, exit_code, main, parse
from bismuth_ctl.tables import format_bytes, format_cpus, render_table


@pytest.fixture(autouse=True)
def no_bismuth_environment(monkeypatch, tmp_path):
    for name in ("CONFIG", "ZOOKEEPER", "ZOOKEEPER_ENV", "LOG_LEVEL", "TIMEOUT", "API", "TOKEN"):
        monkeypatch.delenv("BISMUTH_" + name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--zookeeper", "10.0.0.1:2181", "--timeout", "3", "drain", "10.0.0.2"],
        ["drain", "10.0.0.2", "--json", "--zookeeper", "10.0.0.1:2181", "--timeout", "3"],
        ["--zookeeper", "10.0.0.1:2181", "drain", "--json", "10.0.0.2", "--timeout=3"],
    ],
)
def test_global_flags_go_before_or_after_the_command(argv):
    args, config = parse(argv)
    assert args.json is True and args.ip == "10.0.0.2" and args.wait is None
    assert config == CtlConfig(zookeeper="10.0.0.1:2181", timeout=3.0)


def test_defaults():
    args, config = parse(["nodes"])
    assert args.json is False
    assert config == CtlConfig("127.0.0.1:2181", "default", "warning", 10.0)


def test_flags_override_environment_which_overrides_the_file(tmp_path, monkeypatch):
    file = tmp_path / "ctl.toml"
    file.write_text('zookeeper = "file:1"\nzookeeper_env = "fromfile"\ntimeout = 7\n')
    monkeypatch.setenv("BISMUTH_ZOOKEEPER_ENV", "fromenv")
    _, config = parse(["--config", str(file), "--zookeeper", "flag:2", "nodes"])
    assert config == CtlConfig("flag:2", "fromenv", "warning", 7.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["provision", "256.0.0.1"], "'256.0.0.1' is not an IPv4 address"),
        (["provision"], "the following arguments are required: IP"),
        (["drain", "10.0.0.1", "--wait", "soon"], "'soon' is not a positive number"),
        (["--timeout", "0", "nodes"], "'0' is not a positive number"),
        (["reboot"], "invalid choice: 'reboot'"),
        ([], "the following arguments are required: COMMAND"),
        (["--zookeeper-env", "Bad/Env", "nodes"], "environment name 'Bad/Env'"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_bad_config_file_is_a_usage_error(tmp_path, capsys):
    file = tmp_path / "ctl.toml"
    file.write_text("zookeepr = 'typo'\n")
    assert main(["--config", str(file), "nodes"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("bismuthctl: error: config file") and "'zookeepr'" in err


def test_usage_error_with_json_is_one_line_on_stderr_and_json_on_stdout(capsys):
    assert main(["--json", "undrain", "not-an-ip"]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("bismuthctl: error: argument IP: 'not-an-ip' is not an IPv4")
    assert "not-an-ip" in json.loads(out)["error"]


def test_help_lists_commands_and_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("bootstrap", "provision", "deprovision", "drain", "undrain", "nodes",
                    "functions", "consistency", "function"):  # fmt: skip
        assert command in out
    assert "exit codes:" in out and "5  ZooKeeper or the API unavailable" in out
    assert "6  not authorized" in out


def test_ipv4_is_canonical():
    assert ipv4("10.0.0.1") == "10.0.0.1"
    for bad in ("10.0.0", "::1", "node1", "10.0.0.01"):
        with pytest.raises(argparse.ArgumentTypeError):
            ipv4(bad)


def test_seconds_must_be_positive_and_finite():
    assert seconds("0.5") == 0.5
    for bad in ("0", "-1", "inf", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds(bad)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidDefinition("cpu", "bad"), 2),
        (NotFound("x"), 3),
        (Conflict("x"), 4),
        (Unavailable("x"), 5),
        (InsufficientCapacity("x"), 1),
        (BismuthError("x"), 1),
        (Unauthorized("x"), 6),
        (Forbidden("x"), 6),
    ],
)
def test_exit_codes(error, code):
    assert exit_code(error) == code


def test_table_columns_are_aligned():
    text = render_table(
        ["ip", "alive", "version"], [("10.0.0.1", True, None), ("1.2.3.4", False, "v2")]
    )
    assert text.splitlines() == [
        "IP        ALIVE  VERSION",
        "10.0.0.1  yes    -",
        "1.2.3.4   no     v2",
    ]


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (1023, "1023"), (1536, "1.5Ki"), (64 << 20, "64Mi"), (8 << 30, "8Gi")],
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text


def test_format_cpus():
    assert [format_cpus(c) for c in (0, 0.5, 4.0, 1 / 3)] == ["0", "0.5", "4", "0.333"]
