"""The base image every function can use: built once from Debian packages, imported once.

Every host of ``agents`` gets it. With a checkout install (``make up``) the host builds the
archive itself: ``python3 -m bismuth_images.build`` from its checkout, ``bismuth_source``,
writes ``base_image_archive``, its output printed as it goes. With wheel installs (fleets)
the machine running the deploy builds it into ``base_image_source`` (the same command, once
per run, when pyinfra executes and only if the archive there is not valid: a dry run lists
the build and builds nothing) and uploads it to each host's ``base_image_archive``.
``ctr images import`` then puts it into containerd's namespace. Each step runs only when
needed (the archive is missing, damaged or different; the namespace
lacks the image), so a second run changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import shlex
import sys
import threading
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, server

from bismuth_images.build import BuildOptions, existing_image, host_architecture
from bismuth_images.oci import ImageError
from tasks.containerd import ctr
from tasks.facts import ContainerdImages, ImageArchiveValid
from tasks.local import control_step, run_with_progress, streamed_shell
from tasks.roles import AGENTS, has_role
from tasks.toolkit import CHECKOUT, tool_bin, wheel_install


def archive_name() -> str:
    """``<name>-<tag>.oci.tar`` after the image's last path element."""
    last = str(host.data.base_image).rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    return f"{name}-{tag or 'latest'}.oci.tar"


def archive_path() -> str:
    """On the host: ``base_image_archive``, or ``<var_dir>/images/<name>-<tag>.oci.tar``."""
    if host.data.base_image_archive:
        return str(host.data.base_image_archive)
    return f"{host.data.var_dir}/images/{archive_name()}"


# Hosts execute concurrently (gevent greenlets): the first one builds, the others wait.
BUILDING = threading.Lock()


def source_archive() -> Path:
    """On the machine running the deploy: where the archive hosts get is built and kept."""
    return Path(host.data.base_image_source or CHECKOUT / "var" / "images" / archive_name())


def build_source_archive() -> Path:
    """Build the archive here unless it checks out (when pyinfra executes; once per run)."""
    with BUILDING:
        return _built_archive(source_archive(), str(host.data.base_image))


def source_archive_valid() -> bool:
    """Whether the archive here is a valid image of the reference (reads only)."""
    return _valid(source_archive(), str(host.data.base_image))


@functools.cache
def _valid(path: Path, reference: str) -> bool:
    try:
        architecture = host_architecture()
        options = BuildOptions(output=path, reference=reference)
        return existing_image(options, architecture) is not None
    except ImageError:
        return False


@functools.cache
def _built_archive(path: Path, reference: str) -> Path:
    """Run the build (a no-op when the archive checks out) once per deploy, with progress."""
    command = [
        sys.executable,
        "-m",
        "bismuth_images.build",
        "--output",
        str(path),
        "--name",
        reference,
    ]
    run_with_progress(command, f"base image {reference}", cwd=CHECKOUT)
    return path


@functools.cache
def _sha256(path: Path, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def uploaded(path: str) -> bool:
    """Whether the host's archive is the one built here (asked when executing)."""
    local = source_archive()
    stat = local.stat()
    remote = host.get_fact(Sha256File, path=path)
    return remote == _sha256(local, stat.st_size, stat.st_mtime)


def archive_valid(path: str) -> bool:
    return bool(
        host.get_fact(
            ImageArchiveValid,
            python=tool_bin("python"),
            source=host.data.bismuth_source,
            path=path,
            reference=host.data.base_image,
        )
    )


def image_imported() -> bool:
    images = host.get_fact(
        ContainerdImages,
        address=host.data.containerd_address,
        namespace=host.data.containerd_namespace,
    )
    return host.data.base_image in images


@deploy("Base image")
def base_image() -> None:
    """Build or upload the archive unless the host has it; import it unless containerd has it."""
    if not has_role(AGENTS):
        return
    path, reference = archive_path(), host.data.base_image
    files.directory(name="Image directory", path=posixpath.dirname(path), mode="755")
    if wheel_install():
        control_step(
            f"Build {reference} on this machine", not source_archive_valid(), build_source_archive
        )
        files.put(  # the archive may not exist yet: it is built when pyinfra executes
            name=f"Upload {reference}",
            src=str(source_archive()),
            dest=path,
            mode="644",
            assume_exists=True,
            force=True,
            _if=lambda: not uploaded(path),
        )
    else:
        build = [
            tool_bin("python"),
            "-m",
            "bismuth_images.build",
            "--output",
            path,
            "--name",
            reference,
        ]
        streamed_shell(
            f"Build {reference}",
            f"cd {shlex.quote(host.data.bismuth_source)} && {shlex.join(build)}",
            _if=lambda: not archive_valid(path),
        )
    server.shell(
        name=f"Import {reference} into containerd",
        commands=[ctr("images", "import", path)],
        _if=lambda: not image_imported(),
    )
