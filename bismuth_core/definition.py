"""Function definitions (DESIGN §4) and their validation.

:func:`parse_definition` turns untrusted JSON into a frozen :class:`FunctionDefinition` or
raises :class:`InvalidDefinition` naming the field and the rule it broke. ``to_json`` gives
back the canonical contract shape, which is what ZooKeeper stores.

Beyond the shape, new definitions obey the platform's policy: a route is a DNS name (not an
IP literal, not ``localhost``), and a repo is fetched over https only (plain http only from
hosts the operator lists), without credentials in its URL. Stored definitions are read back
as they were written (``DefinitionLimits.enforce_policy`` off): the agent checks the repo
URL again itself before it fetches anything.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidDefinition

MIN_MEMORY = 4 * 1024 * 1024
MAX_ARGV = 256
MAX_ARG_LENGTH = 4096
MAX_ROUTES = 64

FIELDS = (
    "image",
    "repo",
    "svc_group_id",
    "cpu",
    "memory",
    "svc_quotas",
    "invoke_mode",
    "max_instances",
    "routes",
)

# Docker/OCI image reference grammar (distribution/reference), without IPv6 hosts.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_RE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::{_TAG})?(?:@{_DIGEST})?\Z"
)
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


@dataclass(frozen=True)
class DefinitionLimits:
    """Bounds that depend on the fleet or the operator, not on the contract."""

    cpu_max: float = 64.0
    max_instances: int = 64
    memory_max: int | None = None
    # Hosts ("name" or "name:port") a repo may be fetched from over plain http (labs).
    repo_http_hosts: tuple[str, ...] = ()
    # Route names and repo URLs must obey the policy (off for definitions already stored).
    enforce_policy: bool = True


@dataclass(frozen=True)
class ServerMode:
    """The container runs ``argv`` as an HTTP server on ``port``; requests are proxied to it."""

    argv: tuple[str, ...]
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"Server": [list(self.argv), self.port]}


@dataclass(frozen=True)
class ExecutableMode:
    """``argv`` runs once per request: body on stdin, stdout is the response."""

    argv: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"Executable": list(self.argv)}


@dataclass(frozen=True)
class Quotas:
    """Byte quotas of the service provider; ``None`` means no quota."""

    kv: int | None = None
    blob: int | None = None

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in (("kv", self.kv), ("blob", self.blob)) if v is not None}


@dataclass(frozen=True)
class FunctionDefinition:
    image: str
    cpu: float
    memory: int
    invoke_mode: ServerMode | ExecutableMode
    max_instances: int = 1
    routes: tuple[str, ...] = ()
    repo: tuple[str, str] | None = None
    svc_group_id: uuid.UUID | None = None
    svc_quotas: Quotas | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "repo": list(self.repo) if self.repo else None,
            "svc_group_id": str(self.svc_group_id) if self.svc_group_id else None,
            "cpu": self.cpu,
            "memory": self.memory,
            "svc_quotas": self.svc_quotas.to_json() if self.svc_quotas else None,
            "invoke_mode": self.invoke_mode.to_json(),
            "max_instances": self.max_instances,
            "routes": [{"hostname": h} for h in self.routes],
        }


def parse_definition(raw: object, limits: DefinitionLimits | None = None) -> FunctionDefinition:
    """Validate untrusted JSON; raise :class:`InvalidDefinition` naming the first broken rule."""
    limits = limits or DefinitionLimits()
    if not isinstance(raw, Mapping):
        raise InvalidDefinition("definition", "must be a JSON object")
    unknown = sorted(str(key) for key in raw if key not in FIELDS)
    if unknown:
        raise InvalidDefinition(unknown[0], f"unknown field; allowed fields are {list(FIELDS)}")
    for name in ("image", "cpu", "memory", "invoke_mode"):
        if raw.get(name) is None:
            raise InvalidDefinition(name, "is required")
    return FunctionDefinition(
        image=parse_image(raw["image"]),
        cpu=_parse_cpu(raw["cpu"], limits),
        memory=_parse_memory(raw["memory"], limits),
        invoke_mode=_parse_invoke_mode(raw["invoke_mode"]),
        max_instances=_parse_max_instances(raw.get("max_instances", 1), limits),
        routes=_parse_routes(raw.get("routes", []), limits),
        repo=_parse_repo(raw.get("repo"), limits),
        svc_group_id=_parse_group(raw.get("svc_group_id")),
        svc_quotas=_parse_quotas(raw.get("svc_quotas")),
    )


def parse_image(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidDefinition("image", "must be a non-empty string")
    match = _IMAGE_RE.match(value)
    if not match:
        raise InvalidDefinition(
            "image",
            f"{value!r} is not a valid image reference ([registry[:port]/]name[:tag][@digest], "
            "lowercase name components)",
        )
    if len(match.group("name")) > 255:
        raise InvalidDefinition("image", "repository name is longer than 255 characters")
    return value


def normalize_hostname(value: object, field_name: str = "routes") -> str:
    """An RFC 1123 hostname in canonical form (lowercase, no trailing dot)."""
    if not isinstance(value, str) or not value:
        raise InvalidDefinition(field_name, "hostname must be a non-empty string")
    if not value.isascii():
        raise InvalidDefinition(field_name, f"hostname {value!r} must be ASCII (use punycode)")
    host = value.lower().removesuffix(".")
    if len(host) > 253:
        raise InvalidDefinition(field_name, f"hostname {value!r} is longer than 253 characters")
    for label in host.split("."):
        if not _LABEL_RE.match(label):
            raise InvalidDefinition(
                field_name,
                f"hostname {value!r} is not valid per RFC 1123 (labels of 1-63 letters, digits "
                "or '-', not starting or ending with '-')",
            )
    return host


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_cpu(value: object, limits: DefinitionLimits) -> float:
    if not _is_number(value):
        raise InvalidDefinition("cpu", "must be a number")
    try:
        cpu = float(value)  # type: ignore[arg-type]
    except OverflowError:
        cpu = math.inf
    if not math.isfinite(cpu):
        raise InvalidDefinition("cpu", "must be a finite number")
    if not 0 < cpu <= limits.cpu_max:
        raise InvalidDefinition(
            "cpu", f"must be in (0, {limits.cpu_max:g}] (largest node), got {cpu:g}"
        )
    return cpu


def _parse_memory(value: object, limits: DefinitionLimits) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidDefinition("memory", "must be an integer number of bytes")
    if value < MIN_MEMORY:
        raise InvalidDefinition("memory", f"must be at least {MIN_MEMORY} bytes (4 MiB)")
    if limits.memory_max is not None and value > limits.memory_max:
        raise InvalidDefinition(
            "memory", f"must be at most {limits.memory_max} bytes (largest node)"
        )
    return value


def _parse_max_instances(value: object, limits: DefinitionLimits) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidDefinition("max_instances", "must be an integer")
    if not 1 <= value <= limits.max_instances:
        raise InvalidDefinition(
            "max_instances", f"must be between 1 and {limits.max_instances}, got {value}"
        )
    return value


def _parse_argv(value: object, field_name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidDefinition(field_name, "command must be a non-empty list of strings")
    if len(value) > MAX_ARGV:
        raise InvalidDefinition(field_name, f"command has more than {MAX_ARGV} arguments")
    for arg in value:
        if not isinstance(arg, str) or "\x00" in arg or len(arg) > MAX_ARG_LENGTH:
            raise InvalidDefinition(
                field_name,
                f"command arguments must be strings without NUL of at most {MAX_ARG_LENGTH} "
                "characters",
            )
    if not value[0]:
        raise InvalidDefinition(field_name, "command program must not be empty")
    return tuple(value)


def _parse_invoke_mode(value: object) -> ServerMode | ExecutableMode:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise InvalidDefinition(
            "invoke_mode", 'must be {"Server": [command, port]} or {"Executable": command}'
        )
    ((kind, body),) = value.items()
    if kind == "Executable":
        return ExecutableMode(_parse_argv(body, "invoke_mode.Executable"))
    if kind == "Server":
        if not isinstance(body, list) or len(body) != 2:
            raise InvalidDefinition("invoke_mode.Server", "must be [command, port]")
        argv = _parse_argv(body[0], "invoke_mode.Server")
        port = body[1]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidDefinition("invoke_mode.Server", "port must be an integer in 1..65535")
        return ServerMode(argv, port)
    raise InvalidDefinition("invoke_mode", f"unknown mode {kind!r}; use Server or Executable")


def _parse_routes(value: object, limits: DefinitionLimits) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidDefinition("routes", 'must be a list of {"hostname": ...} objects')
    if len(value) > MAX_ROUTES:
        raise InvalidDefinition("routes", f"at most {MAX_ROUTES} routes")
    hosts: list[str] = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"hostname"}:
            raise InvalidDefinition("routes", 'each route must be {"hostname": "<name>"}')
        host = normalize_hostname(item["hostname"])
        if limits.enforce_policy:
            check_route_name(host)
        if host in hosts:
            raise InvalidDefinition("routes", f"hostname {host!r} is listed twice")
        hosts.append(host)
    return tuple(hosts)


def _parse_repo(value: object, limits: DefinitionLimits) -> tuple[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise InvalidDefinition("repo", "must be null or [url, branch] of non-empty strings")
    url, branch = value
    if any(ord(c) < 0x20 or c == "\x7f" for c in url) or len(url) > 2048:
        raise InvalidDefinition("repo", "url must be at most 2048 printable characters")
    if limits.enforce_policy:
        check_repo_url(url, limits.repo_http_hosts)
    if not _is_branch_name(branch):
        raise InvalidDefinition("repo", f"branch {branch!r} is not a valid git ref name")
    return url, branch


def check_repo_url(url: str, http_hosts: tuple[str, ...] = ()) -> None:
    """Raise :class:`InvalidDefinition` (field ``repo``) unless ``url`` may be fetched:
    ``https://host[:port]/path``, or ``http://`` to a host listed in ``http_hosts``; never
    credentials in the URL, local paths, or any other scheme (file, ssh, git, ext, ...)."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or ""), parts.port
    except ValueError as exc:
        raise InvalidDefinition("repo", f"url {url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    http_allowed = scheme == "http" and _listed(host, port, http_hosts)
    if scheme != "https" and not http_allowed:
        lab = " (plain http only to the hosts listed in repo_http_hosts)"
        raise InvalidDefinition(
            "repo",
            f"url {url!r} is not allowed: only https URLs can be fetched{lab}; local paths, "
            "file, ssh, git, ext and other transports are refused",
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidDefinition("repo", "url must not carry credentials (user@ or user:pass@)")
    if not host:
        raise InvalidDefinition("repo", f"url {url!r} names no host")


def _listed(host: str, port: int | None, hosts: tuple[str, ...]) -> bool:
    wanted = {h.lower() for h in hosts}
    return host in wanted or (port is not None and f"{host}:{port}" in wanted)


def check_route_name(host: str) -> None:
    """Raise :class:`InvalidDefinition` (field ``routes``) unless the canonical hostname
    ``host`` is a DNS name a client can route by: not an IP address in any spelling a URL
    parser accepts (its last label is a number, decimal or ``0x`` hex) and not ``localhost``
    or a name under it."""
    last = host.rsplit(".", 1)[-1]
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        raise InvalidDefinition(
            "routes", f"hostname {host!r} is an IP address; routes must be DNS names"
        )
    if host == "localhost" or host.endswith(".localhost"):
        raise InvalidDefinition(
            "routes", f"hostname {host!r} names this machine (localhost); routes must be DNS names"
        )


def _is_branch_name(branch: str) -> bool:
    """The rules of ``git check-ref-format --branch`` (plus a length bound)."""
    if (
        len(branch) > 255
        or _BAD_REF_CHARS.search(branch)
        or ".." in branch
        or "@{" in branch
        or branch == "@"
        or branch.startswith("-")
        or branch.endswith(".")
    ):
        return False
    return all(
        part and not part.startswith(".") and not part.endswith(".lock")
        for part in branch.split("/")
    )


def _parse_group(value: object) -> uuid.UUID | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidDefinition("svc_group_id", "must be null or a UUID string")


def _parse_quotas(value: object) -> Quotas | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidDefinition("svc_quotas", 'must be null or {"kv": bytes, "blob": bytes}')
    unknown = sorted(str(key) for key in value if key not in ("kv", "blob"))
    if unknown:
        raise InvalidDefinition(f"svc_quotas.{unknown[0]}", "unknown quota; use kv or blob")
    for key, amount in value.items():
        if amount is None:
            continue
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise InvalidDefinition(f"svc_quotas.{key}", "must be a non-negative integer")
    return Quotas(kv=value.get("kv"), blob=value.get("blob"))
