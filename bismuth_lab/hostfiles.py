"""Files of a lab in its state dir, and the mount points it needs on the machine.

Layout of the state dir::

    lab.json                      the lab's record (bismuth_lab.state)
    id_ed25519, id_ed25519.pub    the client key (ssh as root to every host)
    authorized_keys, known_hosts
    hosts/<name>/                 per host: sshd_config, ssh_host_ed25519_key, init.json,
                                  init.log, sshd.log, etc/ (hosts, hostname, resolv.conf)
    hosts/<name>/root/...         the host's private directories (root/etc/bismuth, ...)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bismuth_lab import ssh
from bismuth_lab.mounts import mount_points_everywhere
from bismuth_lab.plan import (
    PRIVATE_DIRS,
    SSHD_PRIVSEP_DIR,
    TMPFS_DIRS,
    HostPlan,
    host_dir_for,
    private_source,
    render_etc_hosts,
    render_sshd_config,
)

ETC_FILES = ("hosts", "hostname", "resolv.conf")


def client_key(state_dir: Path) -> Path:
    return state_dir / "id_ed25519"


def known_hosts(state_dir: Path) -> Path:
    return state_dir / "known_hosts"


def write_client_key(state_dir: Path) -> None:
    """The lab's client key, and authorized_keys holding it (read by every host's sshd)."""
    public = ssh.generate_key(client_key(state_dir), f"bismuth-lab@{state_dir}")
    (state_dir / "authorized_keys").write_text(public + "\n")


def write_host(state_dir: Path, hosts: list[HostPlan], host: HostPlan) -> str:
    """Every file of one host, its private directories, and its init.json.

    Returns the host's known_hosts line.
    """
    hdir = host_dir_for(state_dir, host.name)
    (hdir / "etc").mkdir(parents=True)
    for target in PRIVATE_DIRS:
        private_source(hdir, target).mkdir(parents=True, mode=0o755)
    host_key = hdir / "ssh_host_ed25519_key"
    public = ssh.generate_key(host_key, f"root@{host.name}")
    auth = state_dir / "authorized_keys"
    (hdir / "sshd_config").write_text(render_sshd_config(host, host_key, auth))
    etc = {
        "hosts": render_etc_hosts(hosts),
        "hostname": host.name + "\n",
        "resolv.conf": "",
    }
    for name, text in etc.items():
        (hdir / "etc" / name).write_text(text)
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/sshd"
    init = {
        "hostname": host.name,
        "state_dir": str(state_dir),
        "binds": [[str(private_source(hdir, t)), t] for t in PRIVATE_DIRS]
        + [[str(hdir / "etc" / name), f"/etc/{name}"] for name in ETC_FILES],
        "tmpfs": [[t, "1777" if t == "/tmp" else "755"] for t in TMPFS_DIRS],
        "sshd": [sshd, "-D", "-e", "-f", str(hdir / "sshd_config")],
        "sshd_log": str(hdir / "sshd.log"),
    }
    (hdir / "init.json").write_text(json.dumps(init, indent=2) + "\n")
    return ssh.known_hosts_line(host, public)


def make_mount_points() -> list[str]:
    """Create the machine's missing mount points (and missing parents); return them, parents
    first, so that ``down`` removes only what the lab made.
    """
    created: list[str] = []
    for target in (*PRIVATE_DIRS, *TMPFS_DIRS, SSHD_PRIVSEP_DIR):
        missing = []
        path = Path(target)
        while not path.exists():
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            path.mkdir(mode=0o755)
            created.append(str(path))
    return created


def remove_mount_points(created: list[str]) -> list[str]:
    """rmdir what :func:`make_mount_points` made, children first, unless something is in it
    or some mount namespace (another lab's host) still mounts on it. Returns what stayed.
    """
    in_use = mount_points_everywhere()
    kept = []
    for path in reversed(created):
        if path in in_use:
            kept.append(path)
            continue
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            kept.append(path)
    return kept
