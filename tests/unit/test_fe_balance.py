"""Least-outstanding choice among backends."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest

from bismuth_core.layout import Backend
from bismuth_fe.balance import OutstandingRequests, choose_backend

A = Backend("10.0.0.1", uuid.UUID(int=1))
B = Backend("10.0.0.2", uuid.UUID(int=2))
C = Backend("10.0.0.3", uuid.UUID(int=3))


@pytest.mark.parametrize(
    ("outstanding", "exclude", "expected"),
    [
        ({A.container_id: 2, B.container_id: 1, C.container_id: 3}, (), B),
        ({A.container_id: 1, C.container_id: 1}, (), B),  # absent counts as 0
        ({B.container_id: 0, A.container_id: 5}, (B, C), A),  # tried ones are skipped
        ({}, (A, B, C), None),
    ],
)
def test_choose_least_outstanding(outstanding, exclude, expected):
    assert choose_backend((A, B, C), outstanding, exclude, random.Random(1)) == expected


def test_choose_from_nothing():
    assert choose_backend((), {}) is None


def test_ties_are_broken_at_random():
    rng = random.Random(7)
    picks = Counter(choose_backend((A, B, C), {C.container_id: 1}, (), rng) for _ in range(600))
    assert set(picks) == {A, B}
    assert min(picks.values()) > 200


def test_outstanding_counts_while_held_and_releases_on_error():
    load = OutstandingRequests()
    with load.hold(A.container_id), load.hold(A.container_id):
        assert load.counts == {A.container_id: 2}
        with pytest.raises(RuntimeError), load.hold(B.container_id):
            assert load.total == 3
            raise RuntimeError("upstream failed")
        assert load.counts == {A.container_id: 2}
    assert load.counts == {} and load.total == 0
