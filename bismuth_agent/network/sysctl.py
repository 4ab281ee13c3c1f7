"""Kernel settings container networking needs, changed only when they are not already right.

``/proc/sys/net`` shows the network namespace of the calling thread, so run these through
:func:`.namespaces.run_in_netns` to act on another namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .model import SysctlChange

PROC_SYS = Path("/proc/sys")
FORWARDING = {"net.ipv4.ip_forward": "1"}  # containers reach the outside world via the host
NO_FORWARDING = {"net.ipv4.ip_forward": "0"}  # back as it was, when bismuth turned it on


def read_sysctl(key: str) -> str:
    return (PROC_SYS / key.replace(".", "/")).read_text().strip()


def ensure_sysctls(wanted: Mapping[str, str]) -> list[SysctlChange]:
    """Set each key that differs from ``wanted``; return what was changed."""
    changes = []
    for key, value in wanted.items():
        before = read_sysctl(key)
        if before != value:
            (PROC_SYS / key.replace(".", "/")).write_text(value + "\n")
            changes.append(SysctlChange(key, before, value))
    return changes
