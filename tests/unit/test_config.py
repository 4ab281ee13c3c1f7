"""Daemon configuration: defaults, TOML file, BISMUTH_* environment, flags, coercion, errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismuth_core.config import (
    ConfigError,
    add_common_arguments,
    flag_overrides,
    load_config,
    split_hostport,
)


@dataclass(frozen=True)
class Sample:
    zookeeper: str = "127.0.0.1:2181"
    zookeeper_env: str = "default"
    port: int = 8002
    grace: float = 10.0
    debug: bool = False
    schemes: tuple[str, ...] = ("https",)
    ports: tuple[int, ...] = ()
    limit: int | None = None
    label: str | None = "x"


@dataclass(frozen=True)
class NeedsBind:
    bind: str
    port: int = 8001


@dataclass(frozen=True)
class ListField:
    hosts: list[str] | None = None


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bismuth.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    assert load_config(Sample, env={}) == Sample()


def test_file_sets_fields(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'zookeeper = "10.0.0.1:2181,10.0.0.2:2181"\n'
        'zookeeper-env = "staging"\n'
        "port = 9000\n"
        "grace = 3\n"
        "debug = true\n"
        'schemes = ["https", "git"]\n'
        "limit = 5\n",
    )
    assert load_config(Sample, file=file, env={}) == Sample(
        zookeeper="10.0.0.1:2181,10.0.0.2:2181",
        zookeeper_env="staging",
        port=9000,
        grace=3.0,
        debug=True,
        schemes=("https", "git"),
        limit=5,
    )


def test_environment_sets_fields() -> None:
    env = {
        "BISMUTH_ZOOKEEPER": "zk:2181",
        "BISMUTH_ZOOKEEPER_ENV": "prod",
        "BISMUTH_PORT": "9001",
        "BISMUTH_GRACE": "2.5",
        "BISMUTH_DEBUG": "yes",
        "BISMUTH_SCHEMES": "https, ssh,,file",
        "BISMUTH_PORTS": "1,2",
        "BISMUTH_LIMIT": "",
        "BISMUTH_LABEL": "",
        "OTHER_PORT": "1",
        "PORT": "2",
    }
    assert load_config(Sample, env=env) == Sample(
        zookeeper="zk:2181",
        zookeeper_env="prod",
        port=9001,
        grace=2.5,
        debug=True,
        schemes=("https", "ssh", "file"),
        ports=(1, 2),
        limit=None,
        label=None,
    )


def test_precedence_is_defaults_file_environment_flags(tmp_path: Path) -> None:
    file = write(tmp_path, 'port = 1\ngrace = 1.0\nzookeeper = "file:1"\n')
    env = {"BISMUTH_PORT": "2", "BISMUTH_GRACE": "2.0"}
    overrides = {"port": 3, "grace": None, "log_level": "debug", "unknown_flag": 1}
    got = load_config(Sample, file=file, env=env, overrides=overrides)
    assert (got.zookeeper, got.grace, got.port, got.debug) == ("file:1", 2.0, 3, False)


def test_config_file_from_environment(tmp_path: Path) -> None:
    env_file = write(tmp_path, "port = 7\n")
    other = tmp_path / "other.toml"
    other.write_text("port = 8\n")
    assert load_config(Sample, env={"BISMUTH_CONFIG": env_file}).port == 7
    assert load_config(Sample, file=str(other), env={"BISMUTH_CONFIG": env_file}).port == 8


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISMUTH_PORT", "4242")
    monkeypatch.delenv("BISMUTH_CONFIG", raising=False)
    assert load_config(Sample).port == 4242


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("debug", "1", True),
        ("debug", "TRUE", True),
        ("debug", " on ", True),
        ("debug", "0", False),
        ("debug", "no", False),
        ("debug", "Off", False),
        ("port", "12", 12),
        ("port", " 12 ", 12),
        ("grace", "0.25", 0.25),
        ("grace", "7", 7.0),
        ("schemes", "https", ("https",)),
        ("schemes", " , ", ()),
        ("ports", "80, 443", (80, 443)),
        ("limit", "5", 5),
        ("limit", "", None),
        ("label", "", None),
        ("label", "hello", "hello"),
    ],
)
def test_environment_coercion(name: str, raw: str, expected: object) -> None:
    got = load_config(Sample, env={"BISMUTH_" + name.upper(): raw})
    assert getattr(got, name) == expected
    assert type(getattr(got, name)) is type(expected)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("debug", "maybe"),
        ("debug", ""),
        ("port", "1.5"),
        ("port", "eighty"),
        ("port", ""),
        ("grace", "soon"),
        ("grace", "nan"),
        ("grace", "inf"),
        ("ports", "80,http"),
        ("limit", "many"),
    ],
)
def test_bad_environment_value_names_the_key(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"config {name}:"):
        load_config(Sample, env={"BISMUTH_" + name.upper(): raw})


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("port = 9000.0", "port", 9000),
        ("grace = 4", "grace", 4.0),
        ('debug = "yes"', "debug", True),
        ('port = "9000"', "port", 9000),
        ("ports = [80, 443]", "ports", (80, 443)),
        ('schemes = "https,git"', "schemes", ("https", "git")),
        ("zookeeper = 5", "zookeeper", "5"),
    ],
)
def test_file_coercion(tmp_path: Path, line: str, field: str, expected: object) -> None:
    got = load_config(Sample, file=write(tmp_path, line + "\n"), env={})
    assert getattr(got, field) == expected


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("port = 9000.5", "port"),
        ("port = true", "port"),
        ("port = inf", "port"),
        ("port = [1]", "port"),
        ("grace = true", "grace"),
        ("grace = nan", "grace"),
        ('grace = "x"', "grace"),
        ("debug = 2", "debug"),
        ('zookeeper = ["a:1", "b:2"]', "zookeeper"),
        ("zookeeper = true", "zookeeper"),
        ("zookeeper = {host = 'a'}", "zookeeper"),
        ("schemes = {a = 1}", "schemes"),
        ("schemes = 5", "schemes"),
        ('ports = ["x"]', "ports"),
    ],
)
def test_bad_file_value_names_the_key(tmp_path: Path, line: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"config {field}:"):
        load_config(Sample, file=write(tmp_path, line + "\n"), env={})


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    file = write(tmp_path, "port = 1\nzookeper = 'typo:2181'\n")
    with pytest.raises(ConfigError) as info:
        load_config(Sample, file=file, env={})
    assert "unknown key 'zookeper'" in str(info.value)
    assert file in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(Sample, file=missing, env={})


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bismuth\.toml"):
        load_config(Sample, file=write(tmp_path, "port = = 1\n"), env={})


def test_required_field_missing_is_named() -> None:
    with pytest.raises(ConfigError, match="config bind: required"):
        load_config(NeedsBind, env={})
    assert load_config(NeedsBind, env={"BISMUTH_BIND": "10.0.0.5"}).bind == "10.0.0.5"
    assert load_config(NeedsBind, env={}, overrides={"bind": "10.0.0.6"}).bind == "10.0.0.6"


def test_unsupported_field_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="config hosts: unsupported type"):
        load_config(ListField, env={"BISMUTH_HOSTS": "a,b"})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- flags --------------------------------------------------------------------------


def test_common_flags_become_overrides() -> None:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser, bind_help="address to serve on")
    args = parser.parse_args(
        ["--config", "/etc/b.toml", "--zookeeper", "zk:2181", "--bind", "127.0.0.1:9"]
    )
    assert args.config == "/etc/b.toml"
    assert flag_overrides(args) == {"zookeeper": "zk:2181", "bind": "127.0.0.1:9"}
    got = load_config(Sample, env={"BISMUTH_ZOOKEEPER": "env:1"}, overrides=flag_overrides(args))
    assert got.zookeeper == "zk:2181"


def test_zookeeper_env_flag_maps_to_its_field() -> None:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser, bind_help=None)
    args = parser.parse_args(["--zookeeper-env", "blue", "--log-level", "debug"])
    assert not hasattr(args, "bind")
    overrides = flag_overrides(args)
    assert overrides == {"zookeeper_env": "blue", "log_level": "debug"}
    assert load_config(Sample, env={}, overrides=overrides).zookeeper_env == "blue"


# --- split_hostport -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8002", ("127.0.0.1", 8002)),
        ("127.0.0.1", ("127.0.0.1", 99)),
        ("localhost:0", ("localhost", 0)),
        ("host:65535", ("host", 65535)),
        (":8000", ("", 8000)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::1]", ("::1", 99)),
        ("::1", ("::1", 99)),
        ("fe80::1:2", ("fe80::1:2", 99)),
    ],
)
def test_split_hostport(value: str, expected: tuple[str, int]) -> None:
    assert split_hostport(value, 99) == expected


@pytest.mark.parametrize(
    "value",
    ["host:", "host:http", "host:65536", "host:-1", "host:+80", "host: 80", "[::1]x", "[::1"],
)
def test_split_hostport_rejects_bad_ports(value: str) -> None:
    with pytest.raises(ConfigError, match="bad"):
        split_hostport(value, 99)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
def test_split_hostport_round_trip(host: str, port: int) -> None:
    assert split_hostport(f"{host}:{port}", 1) == (host, port)
    assert split_hostport(host, port) == (host, port)


def test_a_table_setting_comes_from_a_toml_table_or_a_json_object(tmp_path):
    from bismuth_agent.config import AgentConfig

    file = tmp_path / "agent.toml"
    file.write_text('provider_s3 = { endpoint = "http://s3.test", part_size = 8388608 }\n')
    got = load_config(AgentConfig, file=str(file), env={})
    assert got.provider_s3 == {"endpoint": "http://s3.test", "part_size": "8388608"}
    env = {"BISMUTH_PROVIDER_S3": '{"region": "eu-1"}'}
    assert load_config(AgentConfig, env=env).provider_s3 == {"region": "eu-1"}
    with pytest.raises(ConfigError, match="provider_s3"):
        load_config(AgentConfig, env={"BISMUTH_PROVIDER_S3": "[1, 2]"})


def test_an_older_releases_flat_keys_still_load_into_their_table(tmp_path):
    from bismuth_agent.config import AgentConfig

    file = tmp_path / "agent.toml"
    file.write_text(
        'provider_s3_endpoint = "http://old.test"\nprovider_s3_region = "eu-2"\n'
        'provider_s3 = { region = "eu-3" }\n'
    )
    got = load_config(AgentConfig, file=str(file), env={})
    assert got.provider_s3 == {"endpoint": "http://old.test", "region": "eu-3"}
