"""The lab's record of itself: ``<state dir>/lab.json``.

``up`` writes it before creating anything (so ``down`` can always undo a half-made lab) and
again once every host runs. The pyinfra inventory ``inventories/lab.py`` reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/bismuth-lab"
STATE_ENV = "BISMUTH_LAB_STATE"
STATE_FILE = "lab.json"
FORMAT_VERSION = 1


def default_state_dir() -> Path:
    """``$BISMUTH_LAB_STATE``, or /var/lib/bismuth-lab."""
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class HostState:
    """One lab host as it was brought up. PIDs are the machine's (root PID namespace)."""

    name: str
    address: str
    netns: str
    veth: str
    init_pid: int = 0
    init_start: int = 0  # start time (clock ticks since boot) of init_pid, against PID reuse
    sshd_pid: int = 0
    unshare_pid: int = 0  # what started init: unshare, or systemd-nspawn for a systemd host
    kind: str = "shared"  # "shared": the machine's file system; "systemd": see bismuth_lab.systemd


@dataclass(frozen=True)
class LabState:
    """A lab: settings, hosts, the client key, and what ``up`` created on the machine."""

    state_dir: str
    subnet: str
    bridge: str
    prefix: str
    key: str
    known_hosts: str
    hosts: tuple[HostState, ...] = ()
    created_dirs: tuple[str, ...] = ()  # mount points made on the machine, removed by down
    forward_rule: bool = False  # an iptables FORWARD rule for the bridge (bismuth_lab.firewall)
    complete: bool = False  # False while up is still at work (or died half-way)
    version: int = FORMAT_VERSION

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no lab host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def with_host(self, host: HostState) -> LabState:
        return replace(self, hosts=tuple(host if h.name == host.name else h for h in self.hosts))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = [asdict(h) for h in self.hosts]
        data["created_dirs"] = list(self.created_dirs)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        fields = dict(data)
        fields["hosts"] = tuple(HostState(**h) for h in data.get("hosts", []))
        fields["created_dirs"] = tuple(data.get("created_dirs", []))
        return cls(**fields)


def state_file(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load(state_dir: Path) -> LabState | None:
    """The lab recorded in ``state_dir``, or None when there is none."""
    try:
        text = state_file(state_dir).read_text()
    except FileNotFoundError:
        return None
    return LabState.from_json(json.loads(text))


def save(state: LabState) -> None:
    """Write lab.json atomically (a reader never sees half a file)."""
    path = state_file(Path(state.state_dir))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
