"""The error root: HTTP status per domain error and the JSON body daemons answer with."""

from __future__ import annotations

import pytest

from bismuth_core.errors import (
    BismuthError,
    Conflict,
    InsufficientCapacity,
    InvalidDefinition,
    InvalidRequest,
    NotFound,
    TooLarge,
    Unavailable,
)


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (BismuthError, 500),
        (InvalidRequest, 400),
        (NotFound, 404),
        (Conflict, 409),
        (TooLarge, 413),
        (Unavailable, 503),
        (InsufficientCapacity, 503),
    ],
)
def test_status_and_body(cls: type[BismuthError], status: int) -> None:
    err = cls("something went wrong")
    assert err.status == status
    assert err.message == "something went wrong"
    assert str(err) == "something went wrong"
    assert err.to_json() == {"error": "something went wrong"}


def test_invalid_definition_names_the_field() -> None:
    err = InvalidDefinition("cpu", "must be a number")
    assert err.status == 400
    assert err.field == "cpu"
    assert err.message == "cpu: must be a number"
    assert err.to_json() == {"error": "cpu: must be a number", "field": "cpu"}


@pytest.mark.parametrize(
    ("cls", "parents"),
    [
        (InvalidDefinition, (InvalidRequest, BismuthError)),
        (InsufficientCapacity, (Unavailable, BismuthError)),
        (NotFound, (BismuthError,)),
        (Conflict, (BismuthError,)),
        (TooLarge, (BismuthError,)),
    ],
)
def test_one_root_catches_every_domain_error(
    cls: type[BismuthError], parents: tuple[type[BismuthError], ...]
) -> None:
    assert issubclass(cls, parents)
    assert issubclass(cls, Exception)
