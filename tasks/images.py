"""The base image every function can use: built once from Debian packages, imported once.

``python3 -m images.build`` (from the toolkit's checkout, ``bismuth_source``) writes the OCI
archive ``base_image_archive``; ``ctr images import`` puts it into containerd's namespace.
Each step runs only when a fact says it is needed (the archive is missing or damaged; the
namespace lacks the image), so a second run changes nothing.
"""

from __future__ import annotations

import posixpath
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from tasks.cluster import venv_bin
from tasks.containerd import ctr
from tasks.facts import ContainerdImages, ImageArchiveValid


def archive_path() -> str:
    """``base_image_archive``, or ``<var_dir>/images/<name>-<tag>.oci.tar`` after the image."""
    if host.data.base_image_archive:
        return str(host.data.base_image_archive)
    last = str(host.data.base_image).rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    return f"{host.data.var_dir}/images/{name}-{tag or 'latest'}.oci.tar"


def archive_valid(path: str) -> bool:
    return bool(
        host.get_fact(
            ImageArchiveValid,
            python=venv_bin("python"),
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
    """Build the archive unless it is valid; import it unless containerd has the image."""
    path, reference = archive_path(), host.data.base_image
    files.directory(name="Image directory", path=posixpath.dirname(path), mode="755")
    build = [venv_bin("python"), "-m", "images.build", "--output", path, "--name", reference]
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
