"""Function definitions from files people write: JSON, YAML or TOML, with human units.

The format follows the file's suffix (``.json``; ``.yaml``/``.yml``; ``.toml``); any other
name, and ``-`` (stdin), is read as YAML, which also accepts JSON. Sizes (``memory``,
``svc_quotas.kv``, ``svc_quotas.blob``) may be bytes or a number with a unit: ``Ki``, ``Mi``,
``Gi``, ``Ti`` (powers of 1024, also spelled ``KiB``...) or ``K``, ``M``, ``G``, ``T``
(powers of 1000), e.g. ``128Mi``. ``cpu`` may be a fraction of a core (``0.5``) or
millicores (``500m``). Everything is converted to the API's contract form (bytes, fractions);
the rest of the definition goes to the API as written, which validates it and names the
field of any error. Errors here name the file and the field too.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from bismuth_core.errors import InvalidRequest

_SIZE = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B?|[kK]|B)?\s*\Z")
_UNITS = {
    "": 1,
    "B": 1,
    **{f"{p}i": 1024 ** (i + 1) for i, p in enumerate("KMGT")},
    **{f"{p}iB": 1024 ** (i + 1) for i, p in enumerate("KMGT")},
    **{p: 1000 ** (i + 1) for i, p in enumerate("KMGT")},
    **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGT")},
    "k": 1000,
}
_CPU = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<milli>m)?\s*\Z")
SIZE_HELP = (
    "use bytes, or a number with Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T "
    "(powers of 1000), e.g. 128Mi"
)
CPU_HELP = "use a fraction of a core (0.5) or millicores (500m)"


class DefinitionFileError(InvalidRequest):
    """The file cannot be read, parsed or converted; the message names file and field."""


def parse_size(value: object, field: str) -> int:
    """Bytes from an integer or a size with a unit; :class:`ValueError` naming ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: {value!r} is not a size; {SIZE_HELP}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{field}: {value!r} is not a whole number of bytes")
        return int(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{field}: {value!r} is not a size; {SIZE_HELP}")
    amount = Decimal(match["number"]) * _UNITS[match["unit"] or ""]
    if amount != amount.to_integral_value():
        raise ValueError(f"{field}: {value!r} is not a whole number of bytes")
    return int(amount)


def parse_cpu(value: object) -> float:
    """A fraction of a core from a number or millicores; :class:`ValueError` naming cpu."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"cpu: {value!r} is not a finite number")
        return float(value)
    match = _CPU.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"cpu: {value!r} is not a cpu amount; {CPU_HELP}")
    try:
        amount = Decimal(match["number"])
    except InvalidOperation:
        raise ValueError(f"cpu: {value!r} is not a cpu amount; {CPU_HELP}") from None
    return float(amount / 1000 if match["milli"] else amount)


def convert(raw: object) -> dict[str, Any]:
    """The definition with units converted (a copy); :class:`ValueError` naming the field."""
    if not isinstance(raw, dict):
        raise ValueError(f"the definition must be a mapping of fields, not {type(raw).__name__}")
    out = dict(raw)
    if out.get("memory") is not None:
        out["memory"] = parse_size(out["memory"], "memory")
    if out.get("cpu") is not None:
        out["cpu"] = parse_cpu(out["cpu"])
    quotas = out.get("svc_quotas")
    if isinstance(quotas, dict):
        out["svc_quotas"] = {
            key: parse_size(amount, f"svc_quotas.{key}") if amount is not None else None
            for key, amount in quotas.items()
        }
    return out


def _loader(name: str) -> tuple[str, Callable[[str], object]]:
    suffix = Path(name).suffix.lower()
    if suffix == ".json":
        return "JSON", json.loads
    if suffix == ".toml":
        return "TOML", tomllib.loads
    return "YAML", yaml.safe_load


def read_text(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.read()
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionFileError(f"cannot read {name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DefinitionFileError(f"{name}: not UTF-8 text ({exc.reason})") from exc


def load(name: str) -> dict[str, Any]:
    """The definition in file ``name`` (``-``: stdin), in the API's contract form."""
    kind, parse = _loader(name)
    text = read_text(name)
    try:
        raw = parse(text)
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and TOMLDecodeError too
        detail = " ".join(str(exc).split())
        raise DefinitionFileError(f"{name}: not valid {kind}: {detail}") from exc
    try:
        converted = convert(raw)
        json.dumps(converted)  # YAML dates and the like have no JSON form
    except (ValueError, TypeError) as exc:
        raise DefinitionFileError(f"{name}: {exc}") from exc
    return converted
