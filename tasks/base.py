"""The ground every component stands on: Debian packages and the toolkit's directories."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files


@deploy("Base")
def base() -> None:
    """Debian packages (``make up`` installs them first, so normally no change) and directories."""
    apt.packages(
        name="Debian packages",
        packages=list(host.data.debian_packages),
        no_recommends=True,
    )
    for what, path, mode in (
        ("Configuration directory", host.data.etc_dir, "755"),
        ("State directory", host.data.var_dir, "755"),
        ("Log directory", host.data.log_dir, "755"),
        ("Runtime directory", host.data.run_dir, "755"),
    ):
        files.directory(name=what, path=path, mode=mode)
