"""The base image every function can use: built once from Debian packages, imported once.

Every host of ``agents`` gets it. With a checkout install (``make up``) the host builds the
archive itself: ``python3 -m bismuth_images.build`` from its checkout, ``bismuth_source``, writes
``base_image_archive``. With wheel installs (fleets) the machine running the deploy builds it
into ``base_image_source`` (the same command, once per run) and uploads it to each host's
``base_image_archive``. ``ctr images import`` then puts it into containerd's namespace. Each
step runs only when needed (the archive is missing, damaged or different; the namespace
lacks the image), so a second run changes nothing.
"""

from __future__ import annotations

import functools
import posixpath
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from tasks.containerd import ctr
from tasks.facts import ContainerdImages, ImageArchiveValid
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


# Hosts are prepared concurrently (gevent greenlets): the first one builds, the others wait.
BUILDING = threading.Lock()


def source_archive() -> Path:
    """On the machine running the deploy: the archive built there and uploaded (built now)."""
    path = Path(host.data.base_image_source or CHECKOUT / "var" / "images" / archive_name())
    with BUILDING:
        return _built_archive(path, str(host.data.base_image))


@functools.cache
def _built_archive(path: Path, reference: str) -> Path:
    """Run the build (a no-op when the archive checks out) once per deploy."""
    command = [
        sys.executable,
        "-m",
        "bismuth_images.build",
        "--output",
        str(path),
        "--name",
        reference,
    ]
    done = subprocess.run(
        command, cwd=CHECKOUT, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise DeployError(f"cannot build the base image {reference} into {path}:\n{tail}")
    return path


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
        files.put(name=f"Upload {reference}", src=str(source_archive()), dest=path, mode="644")
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
        server.shell(
            name=f"Build {reference}",
            commands=[f"cd {shlex.quote(host.data.bismuth_source)} && {shlex.join(build)}"],
            _if=lambda: not archive_valid(path),
        )
    server.shell(
        name=f"Import {reference} into containerd",
        commands=[ctr("images", "import", path)],
        _if=lambda: not image_imported(),
    )
