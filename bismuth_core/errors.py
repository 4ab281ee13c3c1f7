"""One error root for every Bismuth component, with a subclass per domain failure.

Each class carries the HTTP status that daemons answer with, so one middleware maps any of
them to a JSON body ``{"error": message}``.
"""

from __future__ import annotations


class BismuthError(Exception):
    """Root of the errors Bismuth raises on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"error": self.message}

    def headers(self) -> dict[str, str]:
        """Headers the answer to this error carries."""
        return {}


class InvalidRequest(BismuthError):
    """The request itself is malformed (not JSON, wrong shape)."""

    status = 400


class InvalidDefinition(InvalidRequest):
    """A function definition broke a validation rule; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "field": self.field}


class Unauthorized(BismuthError):
    """No valid credential came with the request; the answer names the scheme to use."""

    status = 401

    def __init__(self, message: str, realm: str = "bismuth") -> None:
        super().__init__(message)
        self.realm = realm

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{self.realm}"'}


class Forbidden(BismuthError):
    """The credential is valid but its scope does not allow this."""

    status = 403


class NotFound(BismuthError):
    status = 404


class Conflict(BismuthError):
    status = 409


class TooLarge(BismuthError):
    status = 413


class Unavailable(BismuthError):
    """A dependency (ZooKeeper, a backend) cannot serve right now; retrying may help."""

    status = 503


class AccessDenied(Unavailable):
    """ZooKeeper refused this process: it lacks (or has the wrong) cluster credentials."""


class InsufficientCapacity(Unavailable):
    """The fleet cannot place what was asked; the message names the shortfall."""


class SecretUndecryptable(BismuthError):
    """A sealed secret cannot be opened with this cluster key.

    ``key_mismatch`` tells the two causes apart: the value was sealed with another cluster
    key (a configuration problem of this host or of the writer), or it is corrupt (damaged,
    or moved to another function or name). Never garbage: opening either fails.
    """

    status = 503

    def __init__(self, message: str, *, key_mismatch: bool) -> None:
        super().__init__(message)
        self.key_mismatch = key_mismatch
