"""Credentials the daemons present to each other, all derived from the cluster key.

The deploy already generates one cluster key per fleet (:mod:`bismuth_core.secrets`);
everything else is derived from it with HKDF-SHA256 under distinct labels, so there is no
other secret to generate, distribute or rotate::

    cluster key ─┬─ ZooKeeper identity "bismuth": every permission     (API, agents, bismuthctl)
                 └─ frontend key ─┬─ agent credential                    (+ frontends)
                                  └─ ZooKeeper identity "bismuth-reader": read the routing
                                     subtrees, nothing else              (frontends)

The API, the agents and ``bismuthctl`` hold the cluster key (``cluster_key`` or
``cluster_key_file``); a frontend holds only the frontend key (``frontend_key_file``,
written by the deploy): what it needs to follow routes and call agents, and nothing that
writes ZooKeeper, reads secrets or tokens, or derives the cluster key.

Every znode of an environment carries the ACL :func:`writer_access` gives it: all
permissions for "bismuth", read for "bismuth-reader" on ``/function``, ``/node`` and
``/route`` (:func:`bismuth_core.layout.frontend_readable`), and nothing for anyone else.

The agent credential is one header value (:data:`AGENT_HEADER`), static per cluster, so any
proxy a frontend configures can present it as well; the agent compares it in constant time
and never passes it on to a container.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from kazoo.security import ACL, make_digest_acl

from . import layout
from .config import ConfigError
from .secrets import KEY_SIZE, decode_key, load_cluster_key
from .zk import ZkAccess

AGENT_HEADER = "X-Bismuth-Agent-Credential"
WRITER_USER = "bismuth"
READER_USER = "bismuth-reader"
_FRONTEND_KEY = b"bismuth frontend key v1"
_AGENT = b"bismuth agent credential v1"
_WRITER = b"bismuth zookeeper writer v1"
_READER = b"bismuth zookeeper reader v1"


def derive(key: bytes, label: bytes) -> bytes:
    """32 bytes for ``label``, from ``key`` (HKDF-SHA256, no salt: the key is random)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=label).derive(key)


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Digest:
    """A ZooKeeper digest identity, ``user:password``."""

    user: str
    password: str = field(repr=False)

    @property
    def auth_data(self) -> tuple[str, str]:
        """This identity as kazoo's ``auth_data`` takes it."""
        return ("digest", f"{self.user}:{self.password}")

    def acl(self, *, everything: bool = False) -> ACL:
        """This identity's ACL entry: every permission, or read only."""
        if everything:
            return make_digest_acl(self.user, self.password, all=True)
        return make_digest_acl(self.user, self.password, read=True)


@dataclass(frozen=True)
class FrontendCredentials:
    """What a frontend holds: the value of :data:`AGENT_HEADER`, the reader identity."""

    agent: str = field(repr=False)
    reader: Digest

    @classmethod
    def from_frontend_key(cls, key: bytes) -> FrontendCredentials:
        return cls(_text(derive(key, _AGENT)), Digest(READER_USER, _text(derive(key, _READER))))

    def is_agent_credential(self, presented: str | None) -> bool:
        """Whether ``presented`` is this cluster's agent credential (constant time)."""
        if presented is None:
            return False
        sent = presented.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(sent, self.agent.encode())


@dataclass(frozen=True)
class ClusterCredentials:
    """What the holders of the cluster key have: the writer identity, the frontend key and
    all it gives."""

    frontend_key: bytes = field(repr=False)
    frontend: FrontendCredentials
    writer: Digest

    @property
    def agent(self) -> str:
        return self.frontend.agent

    @classmethod
    def from_cluster_key(cls, key: bytes) -> ClusterCredentials:
        frontend_key = derive(key, _FRONTEND_KEY)
        writer = Digest(WRITER_USER, _text(derive(key, _WRITER)))
        return cls(frontend_key, FrontendCredentials.from_frontend_key(frontend_key), writer)

    def frontend_key_text(self) -> str:
        """The frontend key as the text of ``frontend_key_file`` (base64)."""
        return base64.urlsafe_b64encode(self.frontend_key).decode("ascii")


def cluster_credentials(value: str = "", file: str = "") -> ClusterCredentials:
    """From the cluster key setting (``cluster_key`` or ``cluster_key_file``); a daemon that
    talks to agents cannot run without it (:class:`ConfigError`)."""
    return ClusterCredentials.from_cluster_key(load_cluster_key(value, file))


def frontend_credentials(file: str) -> FrontendCredentials:
    """From ``frontend_key_file``; :class:`ConfigError` naming the file if it is unusable."""
    if not file:
        raise ConfigError("config frontend_key_file: required (the deploy writes it)")
    try:
        with open(file, "rb") as fh:
            text = fh.read().decode("ascii")
    except OSError as exc:
        raise ConfigError(f"frontend key file {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"frontend key file {file}: not base64 text") from None
    return FrontendCredentials.from_frontend_key(decode_key(text, f"frontend key file {file}"))


def writer_access(credentials: ClusterCredentials) -> ZkAccess:
    """A session with every permission, whose znodes get the environment's ACLs."""
    everything = credentials.writer.acl(everything=True)
    readable = [everything, credentials.frontend.reader.acl()]

    def acl_for(path: str) -> list[ACL]:
        return readable if layout.frontend_readable(path) else [everything]

    return ZkAccess(credentials.writer.auth_data, acl_for, [everything])


def reader_access(credentials: FrontendCredentials) -> ZkAccess:
    """A session that reads the routing subtrees and creates nothing."""
    return ZkAccess(credentials.reader.auth_data)
