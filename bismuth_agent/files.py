"""Files the agent prepares on the host for one container, before its process starts.

Each container has a directory ``<state_dir>/containers/<cid>`` holding its own
``hosts``, ``resolv.conf`` and ``hostname`` (bind-mounted read-only over /etc) and, when the
definition names a repo, the tmpfs it is fetched into (:mod:`bismuth_agent.repos`). Removing
the directory (after that tmpfs is unmounted) removes all of it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from bismuth_core.errors import BismuthError


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


ETC_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")


def etc_mounts(directory: Path) -> dict[str, str]:
    """{path in container: path on host} of the files :func:`write_etc_files` writes."""
    return {target: str(directory / Path(target).name) for target in ETC_FILES}


def write_etc_files(
    directory: Path, cid: uuid.UUID, container_ip: str | None, dns: list[str]
) -> dict[str, str]:
    """Write hosts, resolv.conf and hostname; return {path in container: path on host}."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if container_ip:
        hosts.append(f"{container_ip}\t{cid}")
    texts = {
        "/etc/hosts": "\n".join(hosts) + "\n",
        "/etc/resolv.conf": "".join(f"nameserver {s}\n" for s in dns),
        "/etc/hostname": f"{cid}\n",
    }
    mounts = etc_mounts(directory)
    for target, text in texts.items():
        path = Path(mounts[target])
        path.write_text(text)
        path.chmod(0o644)
    return mounts


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: temp file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
