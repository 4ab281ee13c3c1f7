"""A function's repository, fetched for its container: https only, unprivileged, bounded.

Contract of :func:`fetch`:
- the URL is checked again (a definition an older API stored may name a local path, ssh,
  ...): a refused one raises :class:`~bismuth_core.errors.InvalidDefinition` before anything
  runs;
- the clone goes into a tmpfs of ``max_bytes`` mounted at ``<container dir>/repo``, owned by
  the container's own host uid (nothing of the host is hard-linked or chowned into it);
- git runs as that uid (unprivileged, no supplementary groups, no new privileges) with an
  empty ``HOME``, no system or global config, no credential helper, no terminal prompt,
  ``protocol.allow=never`` except https (and http for hosts the operator lists),
  ``--no-local --depth 1 --single-branch --no-tags``; it is killed (its whole process group)
  past ``timeout``;
- given the container's cgroup (made here with its memory and pids limits, before runc
  takes it over), git runs in it: the tmpfs pages it writes are charged to the container's
  memory, as what the container later writes to /tmp is;
- on failure the tmpfs is unmounted and :class:`RepoFailed` says why in one line.
:func:`remove` unmounts it; both are safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from bismuth_core.definition import check_repo_url
from bismuth_core.errors import BismuthError

from .cgroups import Cgroup, Limits

REPO_DIR = "repo"
GIT_HOME = "git-home"


class RepoFailed(BismuthError):
    """The repository could not be fetched (the message says why)."""


@dataclass(frozen=True)
class RepoSettings:
    http_hosts: tuple[str, ...] = ()
    ca_file: str = ""  # CA bundle git trusts ("": the system's)
    max_bytes: int = 256 << 20
    timeout: float = 120.0


def git_command(url: str, branch: str, settings: RepoSettings, ca_file: str | None) -> list[str]:
    """The clone, with every transport but https (and listed plain http) switched off."""
    options = {
        "protocol.allow": "never",
        "protocol.https.allow": "always",
        "credential.helper": "",
        "core.askPass": "",
        "http.followRedirects": "initial",
    }
    if settings.http_hosts:
        options["protocol.http.allow"] = "always"  # the URL itself was checked against the list
    if ca_file:
        options["http.sslCAInfo"] = ca_file
    config = [arg for name, value in options.items() for arg in ("-c", f"{name}={value}")]
    clone = ["clone", "--quiet", "--no-local", "--depth", "1", "--single-branch", "--no-tags"]
    return ["git", *config, *clone, "--branch", branch, "--", url, "."]


def git_environment(home: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "/bin/false",
        "GIT_PROTOCOL_FROM_USER": "0",
        "LC_ALL": "C",
    }


async def fetch(
    directory: Path,
    url: str,
    branch: str,
    owner: tuple[int, int],
    settings: RepoSettings,
    cgroup: tuple[Cgroup, Limits] | None = None,
) -> str:
    """Clone ``branch`` of ``url`` into a fresh tmpfs at ``directory/repo``; its path."""
    check_repo_url(url, settings.http_hosts)
    target = directory / REPO_DIR
    await remove(directory)
    home = _empty_home(directory, settings.ca_file)
    target.mkdir(mode=0o700, exist_ok=True)
    uid, gid = owner
    options = f"size={settings.max_bytes},mode=0700,uid={uid},gid={gid},nosuid,nodev"
    await _run("mount", "-t", "tmpfs", "-o", options, "bismuth-repo", str(target))
    ca_file = str(home / "ca.pem") if settings.ca_file else None
    argv = unprivileged(git_command(url, branch, settings, ca_file), owner)
    if cgroup is not None:
        cgroup[0].create(cgroup[1])
        argv = cgroup[0].join_command(argv)
    try:
        why = await _clone(target, argv, home, settings)
    except BaseException:
        await remove(directory)
        raise
    if why is not None:
        await remove(directory)
        if cgroup is not None and cgroup[0].oom_kills():
            why = f"it does not fit in the function's memory ({cgroup[1].memory} bytes)"
        raise RepoFailed(f"cannot fetch the repo {url} (branch {branch}): {why}")
    return str(target)


def _empty_home(directory: Path, ca_file: str) -> Path:
    """A HOME git cannot write, holding only a copy of the CA bundle it may read."""
    home = directory / GIT_HOME
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o755)
    if ca_file:
        try:
            data = Path(ca_file).read_bytes()
        except OSError as exc:
            raise RepoFailed(f"cannot read git_ca_file {ca_file}: {exc.strerror}") from None
        (home / "ca.pem").write_bytes(data)
        (home / "ca.pem").chmod(0o644)
    return home


def unprivileged(argv: list[str], owner: tuple[int, int]) -> list[str]:
    uid, gid = owner
    switch = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs"]
    return [*switch, "--", *argv]


async def _clone(target: Path, argv: list[str], home: Path, settings: RepoSettings) -> str | None:
    """Run ``argv`` (git) in ``target``; ``None`` if it succeeded, else why not."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(target),
        env=git_environment(home),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), settings.timeout)
    except BaseException as exc:  # timed out or cancelled: end git and its helpers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: still our group
        await proc.wait()
        if isinstance(exc, TimeoutError):
            return f"git took longer than repo_timeout ({settings.timeout:g}s)"
        raise
    if proc.returncode == 0:
        return None
    text = stderr.decode(errors="replace")
    if "No space left on device" in text:
        return f"it is larger than repo_max_bytes ({settings.max_bytes} bytes)"
    lines = text.strip().splitlines()
    return lines[-1] if lines else f"git exited with status {proc.returncode}"


async def remove(directory: Path) -> None:
    """Unmount the container's repo tmpfs (with its files) and drop its git home."""
    target = directory / REPO_DIR
    if os.path.ismount(target):
        await _run("umount", str(target))
    shutil.rmtree(directory / GIT_HOME, ignore_errors=True)


async def _run(*command: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RepoFailed(f"{command[0]} failed: {stderr.decode(errors='replace').strip()}")
