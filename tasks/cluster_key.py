"""The fleet's cluster key (seals function secrets; the daemons' credentials derive from it),
and the frontend key derived from it.

It is kept on the machine that runs the deploy, in ``cluster_key_source`` (default
``<this checkout>/var/secrets/<zookeeper_env>.key``, mode 0600), generated there the first
time a deploy needs it, and uploaded to ``cluster_key_file`` (default
``<etc_dir>/cluster.key``, root, mode 0600) on every host of ``api`` and ``agents``, whose
API and agent read it (no other host gets it). A
second deploy finds the same key on both sides and changes nothing. Losing the source
file means losing every stored secret: back it up.

Hosts of ``frontends`` get only the frontend key, derived here from the cluster key
(:mod:`bismuth_core.credentials`), as ``frontend_key_file`` (default
``<etc_dir>/frontend.key``, root, 0600): it gives the credential agents ask of callers, and
nothing that opens secrets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from bismuth_core.credentials import cluster_credentials
from bismuth_core.secrets import generate_cluster_key, load_cluster_key
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


@deploy("Cluster key")
def cluster_key() -> OperationMeta | None:
    """Upload the fleet's key (generated on this machine if missing); the upload's result.

    Daemons that read the key restart when it changed (pass the result to their task);
    ``None`` on hosts that need no key.
    """
    if not (has_role(API) or has_role(AGENTS)):
        return None
    source = ensure_key_source(cluster_key_source())
    return files.put(
        name="Cluster key",
        src=str(source),
        dest=cluster_key_file(),
        mode="600",
        user="root",
        group="root",
    )


def frontend_key_file() -> str:
    """Where a frontend reads its key: ``frontend_key_file`` or under ``etc_dir``."""
    return str(host.data.frontend_key_file or f"{host.data.etc_dir}/frontend.key")


@deploy("Frontend key")
def frontend_key() -> OperationMeta | None:
    """Upload the frontend key (derived from the cluster key) to frontends; the result.

    ``None`` on hosts without a frontend.
    """
    if not has_role(FRONTENDS):
        return None
    source = ensure_key_source(cluster_key_source())
    text = cluster_credentials(file=str(source)).frontend_key_text()
    return files.put(
        name="Frontend key",
        src=StringIO(text + "\n"),
        dest=frontend_key_file(),
        mode="600",
        user="root",
        group="root",
    )
