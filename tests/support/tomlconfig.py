"""A configuration dataclass written as the TOML file a daemon reads with ``--config``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any


def write_config(config: Any, path: Path) -> Path:
    """Every field of the dataclass ``config`` into ``path``."""
    lines = []
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            lines.append(f"{f.name} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{f.name} = {value!r}")
        elif isinstance(value, tuple):
            lines.append(f"{f.name} = [{', '.join(_quote(v) for v in value)}]")
        else:
            lines.append(f"{f.name} = {_quote(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _quote(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
