"""SSH keys of a lab (one client key, a host key per host, known_hosts) and the ssh command."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bismuth_lab.plan import HostPlan


def generate_key(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``path`` (no passphrase); return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def known_hosts_line(host: HostPlan, public_key: str) -> str:
    """A known_hosts entry naming the host by address and by name."""
    key_type, key = public_key.split()[:2]
    return f"{host.address},{host.name} {key_type} {key}"


def ssh_argv(key: str, known_hosts: str, address: str, remote: Sequence[str] = ()) -> list[str]:
    """``ssh`` as root to a lab host with the lab's key only, checking its host key.

    ``remote`` is passed through as ssh joins it: words separated by spaces, for the
    remote shell to read.
    """
    options = {
        "IdentityFile": key,
        "IdentitiesOnly": "yes",
        "UserKnownHostsFile": known_hosts,
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "BatchMode": "yes",
        "ConnectTimeout": "10",
        "LogLevel": "ERROR",
    }
    argv = ["ssh", "-F", "/dev/null"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return [*argv, f"root@{address}", *(["--", *remote] if remote else [])]


def run(
    key: str,
    known_hosts: str,
    address: str,
    argv: Sequence[str],
    timeout: float = 120.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on a lab host, each word quoted so it arrives as given."""
    command = ssh_argv(key, known_hosts, address, [shlex.join(argv)])
    return subprocess.run(
        command,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
