"""The base image's root filesystem: mmdebstrap from Debian packages, then checked.

``mmdebstrap --variant=essential --include=python3 SUITE - SOURCES...`` writes the tree as a
tar on stdout (it runs as root, in its own temporary chroot); ``mmtarfilter`` (same Debian
package) drops what an image must not carry, and the result lands in one file. Inside the
tree, customize hooks add the function user ``bismuth`` (uid/gid 1000, home
``/home/bismuth``), a ``/repo`` directory it owns, and host-neutral ``/etc/hostname``,
``/etc/hosts`` and an empty ``/etc/resolv.conf`` (mmdebstrap would copy the build host's; a
container gets its own at run time). dpkg path-excludes keep documentation (except copyright
files), manual pages, info pages and translations out. The essential variant has no apt, and
no package lists or caches are left behind.

:func:`mmdebstrap_command` and :func:`customize_hooks` are pure; :func:`bootstrap` runs them;
:func:`check_rootfs` reads the tar back and names every requirement it misses.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .oci import ImageError

log = logging.getLogger(__name__)

DPKG_PATH_FILTERS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
# Removed from the tar: device nodes (the runtime mounts its own /dev) and apt's leftovers.
TAR_EXCLUDES = ("/dev/*", "/var/lib/apt/lists/*", "/var/cache/apt/*")
# A printf format (escapes, not literal tabs and newlines, so the hook reads as one line).
HOSTS = r"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


@dataclass(frozen=True)
class RootfsSpec:
    """What goes into the root filesystem."""

    suite: str
    sources: tuple[str, ...]  # one-line apt entries, or mirror URIs
    architecture: str  # dpkg name, e.g. amd64
    packages: tuple[str, ...] = ("python3",)
    user: str = "bismuth"
    uid: int = 1000
    gid: int = 1000
    home: str = "/home/bismuth"
    repo_dir: str = "/repo"
    hostname: str = "bismuth"


def _append(line: str, file: str, only_if_present: bool = False) -> str:
    target = f'"$1"{shlex.quote(file)}'
    command = f"printf '%s\\n' {shlex.quote(line)} >> {target}"
    return f"if [ -e {target} ]; then {command}; fi" if only_if_present else command


def customize_hooks(spec: RootfsSpec) -> list[str]:
    """Shell snippets mmdebstrap runs with the chroot directory as ``$1``."""
    passwd = f"{spec.user}:x:{spec.uid}:{spec.gid}:Bismuth function user:{spec.home}:/bin/sh"
    shadow = ":".join([spec.user, "!", "", "0", "99999", "7", "", "", ""])
    dirs = " ".join(f'"$1"{shlex.quote(d)}' for d in (spec.home, spec.repo_dir))
    return [
        _append(passwd, "/etc/passwd"),
        _append(f"{spec.user}:x:{spec.gid}:", "/etc/group"),
        _append(shadow, "/etc/shadow", only_if_present=True),
        _append(f"{spec.user}:!::", "/etc/gshadow", only_if_present=True),
        f"install -d -m 0755 -o {spec.uid} -g {spec.gid} {dirs}",
        f"printf '%s\\n' {shlex.quote(spec.hostname)} > \"$1/etc/hostname\"",
        f'printf {shlex.quote(HOSTS)} > "$1/etc/hosts"',
        ': > "$1/etc/resolv.conf"',
    ]


def mmdebstrap_command(spec: RootfsSpec) -> list[str]:
    """The mmdebstrap invocation writing the tree as a tar to stdout."""
    return [
        "mmdebstrap",
        "--variant=essential",
        f"--include={','.join(spec.packages)}",
        f"--architectures={spec.architecture}",
        "--format=tar",
        *(f"--dpkgopt={rule}" for rule in DPKG_PATH_FILTERS),
        *(f"--customize-hook={hook}" for hook in customize_hooks(spec)),
        spec.suite,
        "-",
        *spec.sources,
    ]


def tar_filter_command() -> list[str]:
    return ["mmtarfilter", *(f"--path-exclude={pattern}" for pattern in TAR_EXCLUDES)]


def bootstrap(spec: RootfsSpec, target: Path) -> None:
    """Build the root filesystem tar at ``target`` (needs root and the archive's network)."""
    for tool in ("mmdebstrap", "mmtarfilter"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed (Debian package: mmdebstrap)")
    command = mmdebstrap_command(spec)
    log.info("running mmdebstrap for %s from %s", spec.suite, ", ".join(spec.sources))
    log.debug("command: %s", shlex.join(command))
    with target.open("wb") as out:
        producer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert producer.stdout is not None
        try:
            consumer = subprocess.Popen(tar_filter_command(), stdin=producer.stdout, stdout=out)
        except BaseException:
            producer.kill()
            producer.wait()
            raise
        producer.stdout.close()  # the filter holds the pipe now; mmdebstrap sees it close
        try:
            filtered, built = consumer.wait(), producer.wait()
        except BaseException:
            for process in (producer, consumer):
                process.kill()
                process.wait()
            raise
    if built != 0:
        raise ImageError(f"mmdebstrap failed with exit status {built} (its log is above)")
    if filtered != 0:
        raise ImageError(f"mmtarfilter failed with exit status {filtered}")


def _passwd_entries(tar: tarfile.TarFile, member: tarfile.TarInfo) -> list[list[str]]:
    stream = tar.extractfile(member)
    text = stream.read().decode(errors="replace") if stream else ""
    return [line.split(":") for line in text.splitlines() if line.count(":") == 6]


def check_rootfs(path: Path, spec: RootfsSpec, python_version: str | None) -> list[str]:
    """What the tar at ``path`` lacks (or holds but must not); empty if it is a good base image."""
    problems: list[str] = []
    wanted = {"usr/bin/python3"}
    if python_version:
        wanted.add(f"usr/lib/python{python_version}/http/server.py")
    dirs: dict[str, tuple[int, int]] = {}
    users: list[list[str]] = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            wanted.discard(name)
            if member.isdir():
                dirs[name] = (member.uid, member.gid)
            elif name == "etc/passwd":
                users = _passwd_entries(tar, member)
            if name.startswith(("dev/", "var/lib/apt/lists/", "var/cache/apt/")):
                problems.append(f"{name} must not be in the image")
    problems += [f"{name} is missing" for name in sorted(wanted)]
    if not any(u[0] == spec.user and u[2:4] == [str(spec.uid), str(spec.gid)] for u in users):
        problems.append(f"/etc/passwd has no {spec.user} with uid/gid {spec.uid}/{spec.gid}")
    for directory in (spec.home, spec.repo_dir):
        owner = dirs.get(directory.strip("/"))
        if owner != (spec.uid, spec.gid):
            problems.append(f"{directory} is {'not owned by the user' if owner else 'missing'}")
    return problems
