"""What a consistency check reports: the kind of damage, the znode, why, and its subject."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from ..layout import Backend


class Kind(StrEnum):
    ORPHAN_CONTAINER = "orphan-container"
    BACKEND_WITHOUT_CONTAINER = "backend-without-container"
    ROUTE_TO_MISSING_FUNCTION = "route-to-missing-function"
    MISSING_ROUTE = "missing-route"
    RESERVATION_DRIFT = "reservation-drift"
    ORPHAN_ROLLOUT = "orphan-rollout"
    ORPHAN_SECRETS = "orphan-secrets"
    UNDECODABLE = "undecodable"


@dataclass(frozen=True)
class Finding:
    """One inconsistency: its kind, the znode it concerns (chroot-relative) and why.

    ``function_id``, ``backend``, ``hostname`` and ``ip`` (a node) name the subject the
    repair acts on; which of them are set depends on the kind.
    """

    kind: Kind
    path: str
    detail: str
    function_id: uuid.UUID | None = None
    backend: Backend | None = None
    hostname: str | None = None
    ip: str | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"kind": str(self.kind), "path": self.path, "detail": self.detail}
        if self.function_id is not None:
            doc["function_id"] = str(self.function_id)
        if self.backend is not None:
            doc["backend"] = self.backend.to_json()
        if self.hostname is not None:
            doc["hostname"] = self.hostname
        if self.ip is not None:
            doc["ip"] = self.ip
        return doc


@dataclass(frozen=True)
class Report:
    """What a check-and-repair run found first, repaired, and still finds at the end."""

    found: tuple[Finding, ...]
    repaired: tuple[Finding, ...]
    remaining: tuple[Finding, ...]
