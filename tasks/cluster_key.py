"""The fleet's cluster key (seals function secrets; the daemons' credentials derive from it),
and the frontend key derived from it.

It is kept on the machine that runs the deploy, in ``cluster_key_source`` (default
``<this checkout>/var/secrets/<zookeeper_env>.key``, mode 0600), generated there the first
time a deploy needs it (when pyinfra executes: a dry run only lists it), and uploaded to
``cluster_key_file`` (default ``<etc_dir>/cluster.key``, root, mode 0600) on every host of
``api`` and ``agents``, whose API and agent read it (no other host gets it). A
second deploy finds the same key on both sides and changes nothing. Losing the source
file means losing every stored secret: back it up.

Hosts of ``frontends`` get only the frontend key, derived here from the cluster key
(:mod:`bismuth_core.credentials`), as ``frontend_key_file`` (default
``<etc_dir>/frontend.key``, root, 0600): it gives the credential agents ask of callers, and
nothing that opens secrets.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.command import StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, python

from bismuth_core.credentials import cluster_credentials
from bismuth_core.secrets import generate_cluster_key, load_cluster_key
from tasks.local import control_step
from tasks.roles import AGENTS, API, FRONTENDS, has_role

CHECKOUT = Path(__file__).resolve().parent.parent


def cluster_key_file() -> str:
    """Where the daemons of a host read the key: ``cluster_key_file`` or under ``etc_dir``."""
    return str(host.data.cluster_key_file or f"{host.data.etc_dir}/cluster.key")


def cluster_key_source() -> Path:
    """The key's file on the machine running the deploy."""
    if host.data.cluster_key_source:
        return Path(host.data.cluster_key_source)
    return CHECKOUT / "var" / "secrets" / f"{host.data.zookeeper_env}.key"


def keep_secret(path: Path, make: Callable[[], str]) -> None:
    """Create ``path`` (0600, its directory 0700) holding ``make()`` unless it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(make() + "\n")


def ensure_key_source(path: Path) -> Path:
    """Create ``path`` with a new key unless it exists; check it."""
    keep_secret(path, generate_cluster_key)
    load_cluster_key(file=str(path))  # a damaged key file stops the deploy, named
    return path


def local_secret(name: str, path: Path, ensure: Callable[[Path], object]) -> bool:
    """Add the step that makes ``path`` here (when pyinfra executes) if it does not exist yet,
    or check the one there now; whether it is to be made."""
    if path.exists():
        ensure(path)  # only reads: an existing file is checked, never rewritten
        return False
    control_step(f"Generate the {name} in {path} on this machine", True, lambda: ensure(path))
    return True


@deploy("Cluster key")
def cluster_key() -> OperationMeta | None:
    """Upload the fleet's key (generated on this machine if missing); the upload's result.

    Daemons that read the key restart when it changed (pass the result to their task);
    ``None`` on hosts that need no key.
    """
    if not (has_role(API) or has_role(AGENTS)):
        return None
    source = cluster_key_source()
    new = local_secret("cluster key", source, ensure_key_source)
    return files.put(  # a key made in this run does not exist yet: it is made when executing
        name="Cluster key",
        src=str(source),
        dest=cluster_key_file(),
        mode="600",
        user="root",
        group="root",
        assume_exists=new,
        force=new,
    )


def frontend_key_file() -> str:
    """Where a frontend reads its key: ``frontend_key_file`` or under ``etc_dir``."""
    return str(host.data.frontend_key_file or f"{host.data.etc_dir}/frontend.key")


@deploy("Frontend key")
def frontend_key() -> OperationMeta | None:
    """Upload the frontend key (derived from the cluster key) to frontends; the result.

    ``None`` on hosts without a frontend. A cluster key this run makes (see
    :func:`cluster_key`, which comes first) is derived from when pyinfra executes.
    """
    if not has_role(FRONTENDS):
        return None
    source, dest = cluster_key_source(), frontend_key_file()
    if not source.exists():
        return python.call(name="Frontend key", function=lambda: _upload_frontend_key(source))
    text = cluster_credentials(file=str(ensure_key_source(source))).frontend_key_text()
    return files.put(
        name="Frontend key",
        src=StringIO(text + "\n"),
        dest=dest,
        mode="600",
        user="root",
        group="root",
    )


def _upload_frontend_key(source: Path) -> None:
    """Derive the key from ``source`` and install it (0600, through a 0700 directory)."""
    if not source.exists():
        raise OperationError(f"no cluster key in {source} to derive the frontend key from")
    text = cluster_credentials(file=str(source)).frontend_key_text()
    dest = frontend_key_file()
    staging = f"{posixpath.dirname(dest)}/.bismuth-upload"
    _run(f"install -d -m 700 -o root -g root {shlex.quote(staging)}")
    staged = f"{staging}/frontend.key"
    if not host.put_file(StringIO(text + "\n"), staged):
        raise OperationError(f"cannot upload the frontend key to {staged}")
    _run(
        f"install -m 600 -o root -g root {shlex.quote(staged)} {shlex.quote(dest)} && "
        f"rm -rf {shlex.quote(staging)}"
    )


def _run(command: str) -> None:
    ok, output = host.run_shell_command(StringCommand(command))
    if not ok:
        raise OperationError(f"{command}: {output.stderr}")
