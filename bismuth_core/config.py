"""Daemon configuration: one frozen dataclass per daemon, filled from file, environment and flags.

Precedence, lowest first: dataclass defaults, the TOML file given by ``--config`` (or
``BISMUTH_CONFIG``), environment variables ``BISMUTH_<FIELD>``, command-line flags. Values
are coerced to the field's type; an unknown key in the file or a bad value is an error that
names the key, raised before the daemon starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "BISMUTH_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


def add_common_arguments(parser: argparse.ArgumentParser, bind_help: str | None) -> None:
    """Flags every daemon and ``bismuthctl`` take (DESIGN §4, entry points)."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--zookeeper", metavar="HOST:PORT[,HOST:PORT...]", help="ZooKeeper ensemble"
    )
    parser.add_argument(
        "--zookeeper-env", metavar="NAME", help="environment (ZooKeeper chroot), default 'default'"
    )
    if bind_help:
        parser.add_argument("--bind", metavar="ADDR", help=bind_help)
    parser.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error")


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the user actually gave, as config field names."""
    return {k: v for k, v in vars(args).items() if v is not None and k != "config"}


def load_config(
    cls: type[T],
    *,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults, ``file``, ``env`` and ``overrides``."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    file = file or env.get(ENV_PREFIX + "CONFIG")
    if file:
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in names:
                raise ConfigError(f"config file {file}: unknown key {key!r}")
            values[key] = _coerce(key, value, hints[key])
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw, hints[name])
    for key, value in (overrides or {}).items():
        if key in names and value is not None:
            values[key] = _coerce(key, value, hints[key])
    return cls(**values)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if (value is None or value == "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("not an integer")
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(
                _coerce(name, i.strip() if isinstance(i, str) else i, args[0])
                for i in items
                if i != ""
            )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {name}: {exc}") from exc
    raise ConfigError(f"config {name}: unsupported type {hint!r}")


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``ADDR[:PORT]`` as a pair; raise :class:`ConfigError` on a bad port."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    try:
        number = int(port)
    except ValueError as exc:
        raise ConfigError(f"bad port in {value!r}") from exc
    if not 0 <= number <= 65535:
        raise ConfigError(f"bad port in {value!r}")
    return host, number
