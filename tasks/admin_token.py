"""The operator's admin token: made on the machine running the deploy, installed on API hosts.

Like the cluster key, it is kept on the machine that runs the deploy, next to the key
(``admin_token_source``, default ``<cluster key's directory>/<its name>.admin-token``, so
``var/secrets/<zookeeper_env>.admin-token``; mode 0600), made there the first time (when
pyinfra executes: a dry run only lists it), and
uploaded to ``admin_token_file`` (default ``<etc_dir>/admin.token``, root, 0600) on every
host of ``api``. Only its hash goes to ZooKeeper (``bismuthctl token register`` on the first
API host, when the environment does not hold it yet). The deploy's own calls to the API
(the sample function) send it. A second deploy finds it in place and changes nothing.

To rotate it: remove the source file, run the deploy (a new token is made, installed and
registered), then ``bismuthctl token revoke <old id>``. Revoking it alone is undone by the
next deploy, which registers it again.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from bismuth_core import tokens
from tasks.cluster import bismuthctl
from tasks.cluster_key import cluster_key_source, keep_secret, local_secret
from tasks.facts import RegisteredTokens
from tasks.roles import API, first_of, has_role


def admin_token_file() -> str:
    """Where API hosts keep the token: ``admin_token_file`` or ``<etc_dir>/admin.token``."""
    return str(host.data.admin_token_file or f"{host.data.etc_dir}/admin.token")


def admin_token_source() -> Path:
    """The token's file on the machine running the deploy, next to the cluster key."""
    if host.data.admin_token_source:
        return Path(host.data.admin_token_source)
    key = cluster_key_source()
    return key.with_name(f"{key.stem}.admin-token")


def ensure_token_source(path: Path) -> str:
    """Create ``path`` with a new admin token unless it exists; the token's id."""
    keep_secret(path, lambda: tokens.issue().text)
    return token_id(path)


def token_id(path: Path) -> str:
    """The id of the token in ``path``; :class:`ValueError` if it holds none."""
    presented = tokens.parse(path.read_text(encoding="ascii", errors="replace").strip())
    if presented is None:
        raise ValueError(f"{path} does not hold a Bismuth token (bth_...): remove it to make one")
    return presented.id


def authorization_header() -> str:
    """Shell: print the ``Authorization`` header line of the installed token (for curl -H @-)."""
    return f"printf 'Authorization: Bearer %s\\n' \"$(cat {admin_token_file()})\""


@deploy("Admin token")
def admin_token() -> None:
    """Install the operator's token on API hosts; register its hash once, from the first."""
    if not has_role(API):
        return
    source = admin_token_source()
    new = local_secret("admin token", source, ensure_token_source)
    files.put(  # a token made in this run does not exist yet: it is made when executing
        name="Admin token",
        src=str(source),
        dest=admin_token_file(),
        mode="600",
        user="root",
        group="root",
        assume_exists=new,
        force=new,
    )
    if first_of(API):
        server.shell(
            name="Register the admin token's hash",
            commands=[bismuthctl("token", "register", admin_token_file())],
            _if=lambda: (
                token_id(source) not in host.get_fact(RegisteredTokens, bismuthctl=bismuthctl())
            ),
        )
