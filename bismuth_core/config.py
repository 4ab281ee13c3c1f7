"""Daemon configuration: one frozen dataclass per daemon, filled from file, environment and flags.

Precedence, lowest first: dataclass defaults, the TOML file given by ``--config`` (or
``BISMUTH_CONFIG``), environment variables ``BISMUTH_<FIELD>``, command-line flags. Values
are coerced to the field's type; an unknown key in the file or a bad value is an error that
names the key, raised before the daemon starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .layout import chroot

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
    """Build ``cls`` (a dataclass) from defaults, ``file``, ``env`` and ``overrides``.

    A class may name keys of older releases in ``LEGACY_KEYS`` (``{old: (table, key)}``):
    files written for them still load, each such value going into its table (entries the
    table itself gives win).
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    legacy: dict[str, tuple[str, str]] = getattr(cls, "LEGACY_KEYS", {})
    values: dict[str, Any] = {}
    old: dict[str, dict[str, str]] = {}
    file = file or env.get(ENV_PREFIX + "CONFIG")
    if file:
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        for key, value in data.items():
            key = key.replace("-", "_")
            if key in legacy:
                table, entry = legacy[key]
                old.setdefault(table, {})[entry] = _coerce(key, value, str)
                continue
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
    for table, entries in old.items():
        values[table] = {**entries, **values.get(table, {})}
    missing = [name for name in _required_fields(cls) if name not in values]
    if missing:
        raise ConfigError(f"config {missing[0]}: required (file, {ENV_PREFIX}* or flag)")
    if "zookeeper_env" in values:
        try:
            chroot(values["zookeeper_env"])
        except ValueError as exc:
            raise ConfigError(f"config zookeeper_env: {exc}") from None
    return cls(**values)


def _required_fields(cls: type) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


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
            return _to_int(value)
        if hint is float:
            return _to_float(value)
        if hint is str:
            if isinstance(value, (bool, list, tuple, dict)):
                raise ValueError(f"not a string: {value!r}")
            return str(value)
        if origin is tuple:
            return _to_tuple(name, value, args[0])
        if origin is dict and args == (str, str):
            return _to_table(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"config {name}: {exc}") from exc
    raise ConfigError(f"config {name}: unsupported type {hint!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _to_table(value: Any) -> dict[str, str]:
    """A table of strings: a TOML table, or a JSON object (from the environment)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"not a table: {value!r}")
    table = {}
    for key, item in value.items():
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"{key}: not a string: {item!r}")
        table[str(key)] = str(item).lower() if isinstance(item, bool) else str(item)
    return table


def _to_tuple(name: str, value: Any, item_hint: Any) -> tuple[Any, ...]:
    """A comma-separated string or a list; empty entries are dropped."""
    if isinstance(value, Mapping):
        raise ValueError(f"not a list: {value!r}")
    items = value.split(",") if isinstance(value, str) else list(value)
    stripped = (i.strip() if isinstance(i, str) else i for i in items)
    return tuple(_coerce(name, i, item_hint) for i in stripped if i != "")


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``ADDR[:PORT]`` (or ``[IPv6]:PORT``) as a pair; raise :class:`ConfigError` on a bad port.

    A bare IPv6 address (more than one ``:``, no brackets) has no port.
    """
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {value!r}: use [IPv6]:PORT")
        return host, _port(value, rest[1:]) if rest else default_port
    if value.count(":") > 1:
        return value, default_port
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    return host, _port(value, port)


def _port(value: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise ConfigError(f"bad port in {value!r}")
    return int(text)
