"""The lab's links, with iproute2: a bridge on the machine, a netns and a veth per host."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from bismuth_lab.plan import HostPlan, LabPlan

NETNS_DIR = Path("/run/netns")


class NetworkError(RuntimeError):
    """An ``ip`` command failed, or the lab's names or subnet are taken on this machine."""


def ip(*args: str, batch: str | None = None) -> str:
    """Run ``ip ARGS`` (with ``-batch -`` reading ``batch``); raise NetworkError on failure."""
    argv = ["ip", *args] + (["-batch", "-"] if batch is not None else [])
    done = subprocess.run(argv, input=batch, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def link_names() -> set[str]:
    return {link["ifname"] for link in json.loads(ip("-j", "link", "show") or "[]")}


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def check_free(plan: LabPlan, hosts: list[HostPlan]) -> None:
    """Refuse a lab whose bridge, links, namespaces or subnet something else already uses."""
    links = link_names()
    taken = [n for n in [plan.bridge, *(h.veth for h in hosts)] if n in links]
    taken += [h.name for h in hosts if netns_exists(h.name)]
    if taken:
        raise NetworkError(f"already exist on this machine: {', '.join(taken)}")
    for entry in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for addr in entry.get("addr_info", []):
            net = ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            if net.overlaps(plan.network):
                raise NetworkError(
                    f"subnet {plan.subnet} overlaps {addr['local']}/{addr['prefixlen']} "
                    f"on {entry['ifname']}: choose another --subnet"
                )


def create(plan: LabPlan, hosts: list[HostPlan]) -> None:
    """Bridge with the machine's address, then per host: netns, veth, address, loopback.

    The bridge does not hand its frames to iptables (br_netfilter), so the machine's
    FORWARD rules never come between two lab hosts.
    """
    prefixlen = plan.network.prefixlen
    lines = [f"link add {plan.bridge} type bridge"]
    lines += [f"link set {plan.bridge} type bridge {opt} 0" for opt in _nf_call_options()]
    lines += [
        f"addr add {plan.gateway}/{prefixlen} dev {plan.bridge}",
        f"link set {plan.bridge} up",
    ]
    for h in hosts:
        lines += [
            f"netns add {h.name}",
            f"link add {h.veth} type veth peer name eth0 netns {h.name}",
            f"link set {h.veth} master {plan.bridge} up",
        ]
    ip(batch="\n".join(lines) + "\n")
    for h in hosts:
        ip(
            "-n",
            h.name,
            batch=f"link set lo up\naddr add {h.address}/{prefixlen} dev eth0\nlink set eth0 up\n",
        )


def _nf_call_options() -> list[str]:
    """The bridge's nf_call_* switches, where br_netfilter is loaded (else there are none)."""
    if not Path("/proc/sys/net/bridge").exists():
        return []
    return ["nf_call_iptables", "nf_call_ip6tables", "nf_call_arptables"]


def remove(bridge: str, hosts: list[tuple[str, str]]) -> None:
    """Delete each host's veth and netns, then the bridge; what is already gone is skipped.

    ``hosts`` holds (netns, veth) pairs.
    """
    links = link_names()
    for netns, veth in hosts:
        if veth in links:
            ip("link", "del", veth)
        if netns_exists(netns):
            ip("netns", "del", netns)
    if bridge in links:
        ip("link", "del", bridge)
