"""Keeping the machine's FORWARD policy from coming between two lab hosts.

With br_netfilter loaded, frames bridged between lab hosts pass the machine's iptables
FORWARD chain. The bridge's own ``nf_call_iptables 0`` (set by :mod:`bismuth_lab.network`)
only takes effect where the machine-wide sysctl ``net.bridge.bridge-nf-call-iptables`` is 0;
when that sysctl is 1 and FORWARD's policy drops (as Docker sets it), the lab inserts one
rule accepting traffic from its bridge to its bridge, and ``down`` deletes it. Otherwise it
leaves the firewall alone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def rule_spec(bridge: str) -> list[str]:
    """The FORWARD rule for ``bridge`` (without -I/-D)."""
    return [
        "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
        "-m", "comment", "--comment", f"bismuth-lab {bridge}",
    ]  # fmt: skip


def rule_needed(call_iptables: bool, forward_rules: str) -> bool:
    """Whether bridged traffic meets iptables and FORWARD's policy is not ACCEPT.

    ``forward_rules`` is the output of ``iptables -S FORWARD``.
    """
    policy = next((ln.split()[2] for ln in forward_rules.splitlines() if ln.startswith("-P ")), "")
    return call_iptables and policy not in ("", "ACCEPT")


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", *args], capture_output=True, text=True, check=False)


def open_bridge(bridge: str) -> bool:
    """Insert the accept rule if needed; return whether it was inserted."""
    if shutil.which("iptables") is None or not CALL_IPTABLES.exists():
        return False
    calls = CALL_IPTABLES.read_text().strip() == "1"
    if not rule_needed(calls, _iptables("-S", "FORWARD").stdout):
        return False
    done = _iptables("-I", *rule_spec(bridge))
    if done.returncode != 0:
        raise RuntimeError(f"iptables -I FORWARD for {bridge}: {done.stderr.strip()}")
    return True


def close_bridge(bridge: str) -> None:
    """Delete the accept rule (every copy of it); none left is fine."""
    if shutil.which("iptables") is None:
        return
    while _iptables("-C", *rule_spec(bridge)).returncode == 0:
        if _iptables("-D", *rule_spec(bridge)).returncode != 0:
            return
