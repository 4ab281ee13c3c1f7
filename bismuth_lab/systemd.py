"""Lab hosts that boot systemd as their PID 1, for the deploy's systemd branch.

A systemd host is a lab host with a file system of its own: a Debian root built once per
machine by ``mmdebstrap`` (what an agent host needs, plus systemd and sshd; cached under
:data:`CACHE_DIR`), seen through an overlay whose upper layer sits in the host's directory
of the lab, and booted by ``systemd-nspawn`` in the host's network namespace. Like every
lab host it has no route beyond the lab's bridge, so its Debian packages are in that root
before it boots and the deploy's package operations change nothing.

Each runs in a cgroup of its own (``lab-<name>`` in the ``name=systemd`` and cgroup2
trees), so two systemd hosts never share a ``/system.slice``. To run containers it gets the
machine's cgroup v1 controllers (bound under ``/run/host-cgroup`` and mounted over
nspawn's read-only ones by a unit that runs before containerd), every capability and the
keyring system calls runc needs: a lab's convenience, not a sandbox.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bismuth_images.sources import host_sources, select_sources

CACHE_DIR = Path("/var/cache/bismuth-lab")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup trees systemd inside a host manages: each host gets lab-<name> in them
SYSTEMD_TREES = ("systemd", "unified")
HOST_CGROUPS = "/run/host-cgroup"
# /proc/sys/net writable: the agent sets forwarding per interface (its own netns anyway)
SPAWN_ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}

# What an agent host of a deploy needs (group_data's debian_packages and agent_packages),
# plus what makes it a host: systemd as init, D-Bus, sshd, Python for the toolkit.
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "iproute2",
    "nftables",
    "curl",
    "supervisor",
    "containerd",
    "git",
    "tini",
)
_EXCLUDES = ("/usr/share/doc/*", "/usr/share/locale/*")

MOUNT_CGROUPS_SCRIPT = f"""#!/bin/sh
# The machine's cgroup v1 controllers, bound under {HOST_CGROUPS} by the lab, over the
# read-only ones nspawn gives a container: containerd and runc make their cgroups there.
set -e
for source in {HOST_CGROUPS}/*; do
    target=/sys/fs/cgroup/$(basename "$source")
    if mountpoint -q "$target"; then umount -l "$target"; fi
    mkdir -p "$target" 2>/dev/null || true
    mount --bind "$source" "$target"
done
"""
MOUNT_CGROUPS_UNIT = """[Unit]
Description=Lab host: the machine's cgroup controllers for containers
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target containerd.service bismuth-containerd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-host-cgroups

[Install]
WantedBy=sysinit.target
"""


class RootfsError(RuntimeError):
    """The systemd hosts' root file system cannot be built; the message says why."""


def suite() -> str:
    """The machine's Debian suite (its root file system is built from the same)."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value:
            return value.strip('"')
    raise RootfsError("/etc/os-release names no VERSION_CODENAME")


def rootfs_key(packages: Sequence[str], codename: str) -> str:
    """The cache key of a root file system: its suite and package set."""
    digest = hashlib.sha256(" ".join([codename, *sorted(packages)]).encode()).hexdigest()
    return f"systemd-{codename}-{digest[:12]}"


def mmdebstrap_argv(target: Path, codename: str, sources: Sequence[str]) -> list[str]:
    argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(ROOTFS_PACKAGES)]
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in _EXCLUDES]
    return [*argv, codename, str(target), *sources]


def ensure_rootfs(cache: Path = CACHE_DIR) -> Path:
    """The cached root file system, built (about a minute) when missing."""
    codename = suite()
    done = cache / rootfs_key(ROOTFS_PACKAGES, codename)
    if (done / "usr/lib/systemd/systemd").exists():
        return done
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap is not installed (Debian package: mmdebstrap)")
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    sources = [s.line() for s in select_sources(host_sources(), codename)]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as scratch:
        target = Path(scratch) / "root"
        built = subprocess.run(
            mmdebstrap_argv(target, codename, sources),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise RootfsError(f"mmdebstrap failed: {built.stderr.strip()[-2000:]}")
        shutil.rmtree(done, ignore_errors=True)
        target.rename(done)
    return done


def overlay_options(lower: Path, host_dir: Path) -> str:
    upper, work = host_dir / "upper", host_dir / "work"
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def mount_root(lower: Path, host_dir: Path) -> Path:
    """The host's root: the cached tree under an overlay whose changes stay in ``host_dir``."""
    for name in ("upper", "work", "rootfs", "containerd"):
        (host_dir / name).mkdir(parents=True, exist_ok=True)
    root = host_dir / "rootfs"
    command = ["mount", "-t", "overlay", "overlay", "-o", overlay_options(lower, host_dir)]
    subprocess.run([*command, str(root)], check=True, capture_output=True)
    return root


def install_host_files(root: Path, host_dir: Path, name: str, authorized_keys: Path) -> None:
    """Make the root this host: name, hosts file, the lab's keys, the cgroup unit."""
    for etc in ("hosts", "hostname", "resolv.conf"):
        shutil.copyfile(host_dir / "etc" / etc, root / "etc" / etc)
    ssh_dir = root / "etc/ssh"
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    for suffix in ("", ".pub"):
        shutil.copyfile(
            host_dir / f"ssh_host_ed25519_key{suffix}", ssh_dir / f"ssh_host_ed25519_key{suffix}"
        )
    os.chmod(ssh_dir / "ssh_host_ed25519_key", 0o600)
    dot_ssh = root / "root/.ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(authorized_keys, dot_ssh / "authorized_keys")
    script = root / "usr/local/sbin/lab-host-cgroups"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(MOUNT_CGROUPS_SCRIPT)
    script.chmod(0o755)
    unit = root / "etc/systemd/system/lab-host-cgroups.service"
    unit.write_text(MOUNT_CGROUPS_UNIT)
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit.name
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{unit.name}")
    (host_dir / "name").write_text(name + "\n")


def cgroup_dirs(name: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """The host's own cgroups: ``lab-<name>`` in each tree its systemd manages."""
    return [root / tree / f"lab-{name}" for tree in SYSTEMD_TREES if (root / tree).is_dir()]


def v1_controllers(mounts: str | None = None, root: Path = CGROUP_ROOT) -> list[str]:
    """The machine's cgroup v1 hierarchies mounted under ``root`` (``/proc/mounts``): the
    host's containerd and runc make their cgroups in each, so each is bound into the host
    (one missing there, and runc fails to make its cgroup in it)."""
    text = Path("/proc/mounts").read_text() if mounts is None else mounts
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] != "cgroup":
            continue
        path = Path(fields[1])
        if path.parent == root and path.name not in SYSTEMD_TREES:  # not controllers
            found.append(path.name)
    return sorted(set(found))


def spawn_argv(name: str, host_dir: Path, netns_path: str) -> list[str]:
    """The command that boots the host: a shell that moves itself into the host's cgroups,
    then becomes ``systemd-nspawn``. containerd's directory is a plain one of the host's
    (``host_dir/containerd``): its snapshots are overlay mounts, which cannot have their
    upper layer on the overlay that is the host's root."""
    enter = "; ".join(f"echo $$ > {d}/cgroup.procs" for d in cgroup_dirs(name))
    binds = [f"--bind=/sys/fs/cgroup/{c}:{HOST_CGROUPS}/{c}" for c in v1_controllers()]
    binds.append(f"--bind={host_dir / 'containerd'}:/var/lib/containerd")
    nspawn = [
        "systemd-nspawn",
        "--register=no",
        "--keep-unit",
        "--boot",
        f"--directory={host_dir / 'rootfs'}",
        f"--machine={name}",
        f"--network-namespace-path={netns_path}",
        "--console=passive",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--capability=all",
        "--system-call-filter=@keyring bpf",
        *binds,
    ]
    return ["sh", "-c", f'{enter}; exec "$@"', "lab-host", *nspawn]


def make_cgroups(name: str) -> None:
    for directory in cgroup_dirs(name):
        directory.mkdir(exist_ok=True)
