"""The ZooKeeper tree of a Bismuth cluster: the only module that knows paths and byte encodings.

Every path below is relative to the environment's chroot ``/<env>`` (see :func:`chroot`)::

    /                                     the chroot node; data "bismuth acl v1" once every
                                          znode below has the environment's ACLs
    /function/<fid>                       JSON function definition
    /function/<fid>/backends              4 bytes IPv4 + 16 bytes container UUID, per backend
    /node/<ip>                            1 byte: 1 enabled for scheduling, 0 disabled/draining
    /node/<ip>/alive                      ephemeral, JSON capacity/version/pool of the live agent
    /node/<ip>/container                  JSON reservation: cpu, memory, count of its containers
    /node/<ip>/container/<cid>            16 bytes function UUID, then JSON reservation metadata
    /node/<ip>/container/<cid>/status     1 byte container status, then JSON: where it serves
    /route/<hostname>                     16 bytes function UUID
    /rollout/<fid>                        packed backends retiring once the others run
    /secret/<fid>                         no data; its children are the function's secrets
    /secret/<fid>/<name>                  the secret's value, sealed (bismuth_core.secrets)
    /leader/api                           kazoo Election of the API replica running background work
    /function/<fid>/owner                 16 bytes UUID of the tenant that owns the function
    /tenant/<tid>                         JSON {"name", "created"}: a tenant
    /tenant/<tid>/function/<fid>          no data: the tenant owns function fid
    /tenant/<tid>/group/<gid>             no data: a service group the tenant created
    /tenant/<tid>/token/<token id>        no data: a token of the tenant
    /tenant_name/<key>                    16 bytes tenant UUID; key: hash of the tenant's name
    /token/<token id>                     JSON {"tenant", "scope", "sha256", "created"}

``/rollout/<fid>`` is desired state owned by the control plane: the backends listed there
are old containers of an update or drain (they stay in the function's ``backends`` too).
They keep serving until every other backend of the function is ``Running``; then the API's
leader removes them in one multi-op. Its children list is the leader's to-do list.

``/node/<ip>/container`` carries the sum of what the node's containers reserve. Every
multi-op that adds or removes containers on a node rewrites it with a version check, so
schedulers read a node's free capacity in one get, and two of them can never both fill
the same free capacity.

A ``status`` znode is written by the agent: its first byte is the status; a ``Running``
Server-mode container's status is followed by JSON ``{"address": "<ipv4>", "port": <port>}``,
the address and port frontends connect to directly. Without it (Executable mode, or an agent
older than direct serving) frontends send requests through the node's agent. ``alive``
carries, besides capacity and version, ``pool``: the node's container network (each
container's /30 comes from it), which frontends route to through the node's address.

``/secret`` is a root of its own rather than a child of ``/function/<fid>``: every frontend
caches the whole ``/function`` subtree, and secrets are none of its business. A value is
sealed with the cluster key, which is never in ZooKeeper; a name is 1-128 characters of
``[A-Za-z0-9._-]`` not starting with '.'. Setting a secret checks in the same multi-op that
the function exists, and the multi-op that deletes a function deletes ``/secret/<fid>`` and
its children too, so secrets never outlive their function.

Tenants own functions, service groups and tokens, recorded both ways: under the tenant
(``/tenant/<tid>/function``, ``group``, ``token``: what it owns is one children read) and,
for functions and tokens, next to the thing (``/function/<fid>/owner``, the ``tenant`` of
``/token/<id>``: whose it is is one read). A function's owner is a child of its znode rather
than a field of its definition, whose JSON is a fixed contract. Both records are created and
deleted in the multi-op that creates or deletes the thing, and deleting a tenant deletes its
``function`` znode, which fails while it has children: a tenant that owns a function, even
one created concurrently, is never deleted. A tenant's name is unique: ``/tenant_name/<key>``
(``key`` is :func:`tenant_name_key`, a hash of the name's case-folded NFC form, so any Unicode
name makes a valid znode name) is created in the same multi-op as ``/tenant/<tid>``.
``/token/<id>`` holds only a hash of the token's secret (:mod:`bismuth_core.tokens`); its
``tenant`` is null for an ``admin`` token, which no tenant lists. A function's
``svc_group_id`` may name only its own tenant's groups and functions; a multi-op that makes a
function use a group rewrites the group's znode, guarded by its version, so deleting a group
(checked unused, guarded by the version it read) never races a new user of it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

FUNCTIONS = "/function"
NODES = "/node"
ROUTES = "/route"
ROLLOUTS = "/rollout"
SECRETS = "/secret"
TENANTS = "/tenant"
TENANT_NAMES = "/tenant_name"
TOKENS = "/token"
ROUTING_ROOTS = (FUNCTIONS, NODES, ROUTES)  # what a frontend follows
TENANCY_ROOTS = (TENANTS, TENANT_NAMES, TOKENS)
ROOTS = (*ROUTING_ROOTS, ROLLOUTS, SECRETS, *TENANCY_ROOTS)
ACL_MARKER = b"bismuth acl v1"  # data of the chroot node once the whole tree has its ACLs
API_LEADER = "/leader/api"  # kazoo Election: the API replica that finishes rollouts

_ENV_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
_BACKEND_SIZE = 20
# json.dumps builds a new encoder for every call with separators; these records are
# written for every container placed
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def chroot(env: str) -> str:
    """The chroot path holding environment ``env``; several environments share an ensemble."""
    if not _ENV_RE.match(env):
        raise ValueError(
            f"environment name {env!r} must be 1-63 chars of a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return "/" + env


def frontend_readable(path: str) -> bool:
    """Whether frontends (the read-only identity) may read ``path``: the routing subtrees
    only, never secrets, tokens, tenants or the leader's znodes."""
    return any(path == root or path.startswith(root + "/") for root in ROUTING_ROOTS)


def routing_reads_data(path: str) -> bool:
    """Whether a frontend's routing reads the data of the znode at ``path`` (a route, a
    function's backends, a node, its ``alive``, a container's status) rather than only its
    existence and children (a function's definition, a container's record)."""
    parts = tuple(path.split("/")[1:])
    root, depth = "/" + parts[0], len(parts)
    if depth == 2:
        return root in (ROUTES, NODES)
    if depth == 3:
        return (root, parts[2]) in ((FUNCTIONS, "backends"), (NODES, "alive"))
    return depth == 5 and root == NODES and (parts[2], parts[4]) == ("container", "status")


def function_path(fid: uuid.UUID) -> str:
    return f"{FUNCTIONS}/{fid}"


def backends_path(fid: uuid.UUID) -> str:
    return f"{FUNCTIONS}/{fid}/backends"


def owner_path(fid: uuid.UUID) -> str:
    """The tenant owning function ``fid`` (created and deleted with the function)."""
    return f"{FUNCTIONS}/{fid}/owner"


def tenant_path(tid: uuid.UUID) -> str:
    return f"{TENANTS}/{tid}"


def tenant_name_key(name: str) -> str:
    """The znode name that reserves tenant name ``name``: names differing only in case or
    Unicode normalization share it."""
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    return hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()


def tenant_name_path(name: str) -> str:
    return f"{TENANT_NAMES}/{tenant_name_key(name)}"


def tenant_functions_path(tid: uuid.UUID) -> str:
    return f"{TENANTS}/{tid}/function"


def tenant_function_path(tid: uuid.UUID, fid: uuid.UUID) -> str:
    return f"{TENANTS}/{tid}/function/{fid}"


def tenant_groups_path(tid: uuid.UUID) -> str:
    return f"{TENANTS}/{tid}/group"


def tenant_group_path(tid: uuid.UUID, gid: uuid.UUID) -> str:
    return f"{TENANTS}/{tid}/group/{gid}"


def tenant_tokens_path(tid: uuid.UUID) -> str:
    return f"{TENANTS}/{tid}/token"


def tenant_token_path(tid: uuid.UUID, token_id: str) -> str:
    return f"{TENANTS}/{tid}/token/{token_id}"


def token_path(token_id: str) -> str:
    return f"{TOKENS}/{token_id}"


def retiring_path(fid: uuid.UUID) -> str:
    return f"{ROLLOUTS}/{fid}"


def secrets_path(fid: uuid.UUID) -> str:
    """The parent of function ``fid``'s secrets (absent until its first secret is set)."""
    return f"{SECRETS}/{fid}"


def secret_path(fid: uuid.UUID, name: str) -> str:
    return f"{SECRETS}/{fid}/{name}"


def node_path(ip: str) -> str:
    return f"{NODES}/{ip}"


def alive_path(ip: str) -> str:
    return f"{NODES}/{ip}/alive"


def containers_path(ip: str) -> str:
    return f"{NODES}/{ip}/container"


def containers_owner(path: str) -> str | None:
    """The node whose ``container`` znode ``path`` is, or None for any other path."""
    parts = path.split("/")
    if len(parts) == 4 and "/" + parts[1] == NODES and parts[3] == "container":
        return parse_ipv4(parts[2])
    return None


def container_path(ip: str, cid: uuid.UUID) -> str:
    return f"{NODES}/{ip}/container/{cid}"


def status_path(ip: str, cid: uuid.UUID) -> str:
    return f"{NODES}/{ip}/container/{cid}/status"


def route_path(hostname: str) -> str:
    return f"{ROUTES}/{hostname}"


def parse_uuid(text: str) -> uuid.UUID | None:
    """A znode name or URL segment as a UUID, or ``None`` if it is not one."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def parse_ipv4(text: str) -> str | None:
    """A node name as a canonical IPv4 address, or ``None`` if it is not one."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


# --- container status ---------------------------------------------------------------


class ContainerStatus(IntEnum):
    """Observed state of one container, one byte in its ``status`` znode."""

    INVALID = 0
    STARTING = 1
    RUNNING = 2
    PAUSED = 3
    FAILED = 4

    @property
    def label(self) -> str:
        return self.name.capitalize()


def encode_status(status: ContainerStatus, endpoint: ServingEndpoint | None = None) -> bytes:
    """The status byte, followed by the serving endpoint's JSON when there is one."""
    head = bytes([int(status)])
    return head if endpoint is None else head + endpoint.encode()


def decode_status(data: bytes | None) -> ContainerStatus:
    """Unknown, empty or missing data reads as ``INVALID``; never raises."""
    if not data:
        return ContainerStatus.INVALID
    try:
        return ContainerStatus(data[0])
    except ValueError:
        return ContainerStatus.INVALID


@dataclass(frozen=True)
class ServingEndpoint:
    """Where a Server-mode container takes requests straight from a frontend."""

    address: str  # the container's IPv4 address
    port: int

    def encode(self) -> bytes:
        return json.dumps({"address": self.address, "port": self.port}).encode()


def decode_endpoint(data: bytes | None) -> ServingEndpoint | None:
    """The endpoint after a status byte; None when absent or malformed (never raises)."""
    if not data or len(data) < 2:
        return None
    raw = _json_object(data[1:])
    address, port = parse_ipv4(str(raw.get("address", ""))), raw.get("port")
    if address is None or not isinstance(port, int) or isinstance(port, bool):
        return None
    return ServingEndpoint(address, port) if 1 <= port <= 65535 else None


# --- backends -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Backend:
    """One container of a function: the node it runs on and its UUID."""

    ip: str
    container_id: uuid.UUID

    def to_json(self) -> dict[str, str]:
        return {"ip": self.ip, "container_id": str(self.container_id)}


def pack_backends(backends: Iterable[Backend]) -> bytes:
    return b"".join(ipaddress.IPv4Address(b.ip).packed + b.container_id.bytes for b in backends)


def unpack_backends(data: bytes | None) -> tuple[Backend, ...]:
    if not data:
        return ()
    if len(data) % _BACKEND_SIZE:
        raise ValueError(f"packed backends length {len(data)} is not a multiple of 20")
    return tuple(
        Backend(
            str(ipaddress.IPv4Address(data[i : i + 4])),
            uuid.UUID(bytes=data[i + 4 : i + _BACKEND_SIZE]),
        )
        for i in range(0, len(data), _BACKEND_SIZE)
    )


# --- node znodes --------------------------------------------------------------------


def encode_enabled(enabled: bool) -> bytes:
    return b"\x01" if enabled else b"\x00"


def decode_enabled(data: bytes | None) -> bool:
    return data is not None and data[:1] == b"\x01"


@dataclass(frozen=True)
class NodeAlive:
    """What a live agent advertises in its ephemeral ``alive`` znode."""

    cpus: float
    memory: int
    version: str = ""
    containers: int = 0
    # Memory each container costs the node beyond its own limit (its provider's cgroup).
    container_overhead: int = 0
    pool: str = ""  # the node's container network (CIDR); "" from agents that predate it

    def encode(self) -> bytes:
        return json.dumps(
            {
                "cpus": self.cpus,
                "memory": self.memory,
                "version": self.version,
                "containers": self.containers,
                "container_overhead": self.container_overhead,
                "pool": self.pool,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> NodeAlive:
        """Missing fields read as zero capacity, so a malformed znode schedules nothing; a
        pool that is not an IPv4 network reads as none."""
        raw = _json_object(data)
        return cls(
            cpus=float(_number(raw.get("cpus"))),
            memory=int(_number(raw.get("memory"))),
            version=str(raw.get("version", "")),
            containers=int(_number(raw.get("containers"))),
            container_overhead=int(_number(raw.get("container_overhead"))),
            pool=_network(raw.get("pool")),
        )


def _network(value: object) -> str:
    """A canonical IPv4 network, or "" for anything else."""
    try:
        return str(ipaddress.IPv4Network(str(value))) if isinstance(value, str) else ""
    except ValueError:
        return ""


def _json_object(data: bytes | None) -> dict[str, object]:
    """``data`` as a JSON object; empty, malformed or non-object data reads as ``{}``."""
    try:
        raw = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _number(value: object) -> float | int:
    """A non-negative finite JSON number; anything else reads as zero."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        return 0
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return 0
    return value if math.isfinite(number) else 0


# --- container znodes ---------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRecord:
    """Desired container on a node: its function and the resources reserved for it."""

    function_id: uuid.UUID
    cpu: float = 0.0
    memory: int = 0

    def encode(self) -> bytes:
        meta = _COMPACT.encode({"cpu": self.cpu, "memory": self.memory})
        return self.function_id.bytes + meta.encode()

    @classmethod
    def decode(cls, data: bytes) -> ContainerRecord:
        if len(data) < 16:
            raise ValueError(f"container znode holds {len(data)} bytes, expected at least 16")
        fid = uuid.UUID(bytes=data[:16])
        try:
            meta = json.loads(data[16:] or b"{}")
        except (ValueError, RecursionError):
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        return cls(fid, float(_number(meta.get("cpu"))), int(_number(meta.get("memory"))))


@dataclass(frozen=True)
class Reservation:
    """What a node's containers reserve in total (data of ``/node/<ip>/container``)."""

    cpu: float = 0.0
    memory: int = 0
    containers: int = 0

    def plus(self, cpu: float, memory: int, containers: int) -> Reservation:
        return Reservation(
            max(round(self.cpu + cpu, 6), 0.0),
            max(self.memory + memory, 0),
            max(self.containers + containers, 0),
        )

    def encode(self) -> bytes:
        return _COMPACT.encode(
            {"cpu": self.cpu, "memory": self.memory, "containers": self.containers}
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Reservation:
        """Empty or malformed data reads as nothing reserved."""
        raw = _json_object(data)
        return cls(
            float(_number(raw.get("cpu"))),
            int(_number(raw.get("memory"))),
            int(_number(raw.get("containers"))),
        )


# --- routes -------------------------------------------------------------------------


def encode_route(fid: uuid.UUID) -> bytes:
    return fid.bytes


def decode_route(data: bytes | None) -> uuid.UUID | None:
    if not data or len(data) != 16:
        return None
    return uuid.UUID(bytes=data)


# --- tenants, tokens, groups ----------------------------------------------------------


def encode_owner(tid: uuid.UUID) -> bytes:
    return tid.bytes


def decode_owner(data: bytes | None) -> uuid.UUID | None:
    """The tenant of an ``owner`` (or ``tenant_name``) znode; ``None`` if malformed."""
    if not data or len(data) != 16:
        return None
    return uuid.UUID(bytes=data)


@dataclass(frozen=True)
class TenantRecord:
    """Data of ``/tenant/<tid>``."""

    name: str
    created: float = 0.0

    def encode(self) -> bytes:
        return json.dumps({"name": self.name, "created": self.created}).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> TenantRecord | None:
        """``None`` if the data is not a tenant record."""
        raw = _json_object(data)
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            return None
        return cls(name, float(_number(raw.get("created"))))


@dataclass(frozen=True)
class TokenRecord:
    """Data of ``/token/<id>``: whose it is, what it may do, and its secret's hash.

    ``tenant`` is ``None`` for an admin token; ``scope`` is ``"admin"`` or ``"tenant"``.
    """

    tenant: uuid.UUID | None
    scope: str
    sha256: str
    created: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "tenant": str(self.tenant) if self.tenant else None,
                "scope": self.scope,
                "sha256": self.sha256,
                "created": self.created,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> TokenRecord | None:
        """``None`` if the data is not a usable token record (such a token never matches)."""
        raw = _json_object(data)
        scope, sha, tenant = raw.get("scope"), raw.get("sha256"), raw.get("tenant")
        if scope not in ("admin", "tenant") or not isinstance(sha, str) or len(sha) != 64:
            return None
        tid = parse_uuid(tenant) if isinstance(tenant, str) else None
        if (scope == "tenant") != (tid is not None) or (tenant is not None and tid is None):
            return None
        return cls(tid, scope, sha, float(_number(raw.get("created"))))
