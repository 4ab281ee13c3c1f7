"""Files the agent prepares on the host for one container, before its process starts.

Each container has a directory ``<state_dir>/containers/<cid>`` holding its own
``hosts``, ``resolv.conf`` and ``hostname`` (bind-mounted read-only over /etc) and, when the
definition names a repo, its clone (bind-mounted at /repo), owned by the container user as
the host sees it (the mapped uid). Removing the directory removes all of it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import uuid
from pathlib import Path

from bismuth_core.errors import BismuthError

CLONE_TIMEOUT = 120.0


class PrepareFailed(BismuthError):
    """A container's files could not be prepared (the message says why)."""


def container_dir(state_dir: str | Path, cid: uuid.UUID) -> Path:
    return Path(state_dir) / "containers" / str(cid)


def nameservers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The host's nameservers a container can use: loopback ones are unreachable from it."""
    servers = []
    try:
        lines = Path(resolv_conf).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if not address.is_loopback:
                servers.append(str(address))
    return servers


def write_etc_files(
    directory: Path, cid: uuid.UUID, container_ip: str | None, dns: list[str]
) -> dict[str, str]:
    """Write hosts, resolv.conf and hostname; return {path in container: path on host}."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if container_ip:
        hosts.append(f"{container_ip}\t{cid}")
    files = {
        "/etc/hosts": "\n".join(hosts) + "\n",
        "/etc/resolv.conf": "".join(f"nameserver {s}\n" for s in dns),
        "/etc/hostname": f"{cid}\n",
    }
    mounts = {}
    for target, text in files.items():
        path = directory / Path(target).name
        path.write_text(text)
        path.chmod(0o644)
        mounts[target] = str(path)
    return mounts


async def clone_repo(
    directory: Path, url: str, branch: str, uid: int, gid: int, timeout: float = CLONE_TIMEOUT
) -> str:
    """Clone ``branch`` of ``url`` into ``directory/repo`` owned by uid:gid; return its path."""
    target = directory / "repo"
    if target.exists():
        shutil.rmtree(target)
    git = shutil.which("git")
    if git is None:
        raise PrepareFailed("cannot clone the repo: git is not installed on this node")
    proc = await asyncio.create_subprocess_exec(
        git,
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--branch",
        branch,
        "--",
        url,
        str(target),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0"},
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PrepareFailed(f"cloning {url} took longer than {timeout:g}s") from None
    if proc.returncode != 0:
        why = stderr.decode(errors="replace").strip().splitlines()
        raise PrepareFailed(f"cannot clone {url} (branch {branch}): {why[-1] if why else ''}")
    for root, dirs, names in os.walk(target):
        for name in [*dirs, *names]:
            os.lchown(os.path.join(root, name), uid, gid)
    os.lchown(target, uid, gid)
    return str(target)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
