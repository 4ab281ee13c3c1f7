"""Kernel settings container networking needs, changed only when they are not already right.

``/proc/sys/net`` shows the network namespace of the calling thread, so run these through
:func:`.namespaces.run_in_netns` to act on another namespace.

IPv4 forwarding is decided per receiving interface (``net.ipv4.conf.<if>.forwarding``;
``net.ipv4.ip_forward`` writes every interface's at once). The agent never turns the global
switch on: it turns forwarding on for its containers' host ends and, where the host did not
forward, for the host's own interfaces (uplinks) so that replies and fleet traffic reach
containers; a firewall rule per such uplink keeps everything else unforwarded, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .model import SysctlChange

PROC_SYS = Path("/proc/sys")
GLOBAL_FORWARDING = "net.ipv4.ip_forward"
NO_FORWARDING = {GLOBAL_FORWARDING: "0"}  # an older agent's global switch, back off


def forwarding_key(ifname: str) -> str:
    """The key of one interface's IPv4 forwarding (slash form: names may hold dots)."""
    return f"net/ipv4/conf/{ifname}/forwarding"


def _path(key: str) -> Path:
    return PROC_SYS / (key if "/" in key else key.replace(".", "/"))


def read_sysctl(key: str) -> str:
    return _path(key).read_text().strip()


def ensure_sysctls(wanted: Mapping[str, str]) -> list[SysctlChange]:
    """Set each key that differs from ``wanted``; return what was changed."""
    changes = []
    for key, value in wanted.items():
        before = read_sysctl(key)
        if before != value:
            _path(key).write_text(value + "\n")
            changes.append(SysctlChange(key, before, value))
    return changes


def host_forwards() -> bool:
    """Whether the host routes on its own (the global switch is on)."""
    return read_sysctl(GLOBAL_FORWARDING) == "1"


def forward_on_uplinks(
    uplinks: Iterable[str], guarded_elsewhere: set[str]
) -> tuple[list[SysctlChange], list[str]]:
    """Turn forwarding on for the uplinks that lack it; returns (changes, uplinks to guard).

    An uplink is guarded if this call turned it on or another bismuth table guards it (it
    was turned on by another agent); an uplink the operator set to forward stays unguarded.
    Nothing happens on a host that routes on its own.
    """
    if host_forwards():
        return [], []
    changes: list[SysctlChange] = []
    guarded: list[str] = []
    for ifname in uplinks:
        try:
            changed = ensure_sysctls({forwarding_key(ifname): "1"})
        except FileNotFoundError:  # gone since it was listed
            continue
        changes += changed
        if changed or ifname in guarded_elsewhere:
            guarded.append(ifname)
    return changes, guarded


def forward_off(ifnames: Iterable[str]) -> list[SysctlChange]:
    """Turn forwarding back off on interfaces bismuth turned it on for (gone ones skipped)."""
    changes: list[SysctlChange] = []
    for ifname in ifnames:
        try:
            changes += ensure_sysctls({forwarding_key(ifname): "0"})
        except FileNotFoundError:
            continue
    return changes
