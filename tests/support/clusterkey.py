"""The test session's cluster key, as the deploy generates one, and what derives from it.

Every daemon a test starts gets this key (or the frontend key derived from it) through the
same settings the deploy writes (``cluster_key_file``, ``frontend_key_file``), so the tests
run the credential checks the fleet runs. :data:`AGENT_AUTH` is what a caller of an agent's
``/invoke`` or ``/logs`` must send, as the frontends and the API do; :data:`ACCESS` is how
the cluster's daemons authenticate to ZooKeeper (and the ACLs of what they create).
"""

from __future__ import annotations

from pathlib import Path

from bismuth_core.credentials import AGENT_HEADER, ClusterCredentials, writer_access
from bismuth_core.secrets import generate_cluster_key, load_cluster_key

KEY_TEXT = generate_cluster_key()
CREDENTIALS = ClusterCredentials.from_cluster_key(load_cluster_key(KEY_TEXT))
AGENT_AUTH = {AGENT_HEADER: CREDENTIALS.agent}
ACCESS = writer_access(CREDENTIALS)  # the cluster's own ZooKeeper access (API, agents, ctl)


def write_key_files(directory: Path) -> tuple[Path, Path]:
    """The cluster key file and the frontend key file in ``directory`` (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = (directory / "cluster.key", directory / "frontend.key")
    for path, text in zip(files, (KEY_TEXT, CREDENTIALS.frontend_key_text()), strict=True):
        path.write_text(text + "\n")
        path.chmod(0o600)
    return files
