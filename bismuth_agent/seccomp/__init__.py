"""The seccomp profile every container runs under: containerd's default plus our denials.

The profiles are data (``<arch>.json`` next to this module), generated from containerd's Go
source by :mod:`bismuth_agent.seccomp.generate`; a test regenerates them and compares.
"""

from __future__ import annotations

import functools
import json
import platform
from pathlib import Path
from typing import Any

from bismuth_core.errors import BismuthError

_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class NoProfile(BismuthError):
    """No seccomp profile exists for this machine's architecture."""


def host_arch() -> str:
    machine = platform.machine()
    if machine not in _MACHINES:
        raise NoProfile(f"no seccomp profile for this machine's architecture ({machine})")
    return _MACHINES[machine]


@functools.cache
def profile(arch: str | None = None) -> dict[str, Any]:
    """The profile (the runtime spec's ``linux.seccomp``) for ``arch`` (default: this host)."""
    path = Path(__file__).resolve().parent / f"{arch or host_arch()}.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded
