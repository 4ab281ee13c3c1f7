"""Host id ranges per container: the pool's rules, its file, reading a task's uid map."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest

from bismuth_agent.idranges import IdPool, IdPoolError, IdRangeStore, mapping_of
from bismuth_agent.spec import IdMapping
from bismuth_core.errors import Conflict, InsufficientCapacity

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))
START, SIZE = 1_000_000, 65536


def pool(count: int = 3, **held: int) -> IdPool:
    return IdPool(START, SIZE, count, {uuid.UUID(int=int(k[1:])): v for k, v in held.items()})


def test_each_container_gets_the_lowest_free_range_and_keeps_it():
    p = pool()
    assert p.allocate(A) == IdMapping(START, SIZE)
    assert p.allocate(B) == IdMapping(START + SIZE, SIZE)
    assert p.allocate(A) == IdMapping(START, SIZE)  # idempotent
    assert p.release(A) == IdMapping(START, SIZE)
    assert p.release(A) is None
    assert p.allocate(C) == IdMapping(START, SIZE)  # released ranges are reused first
    assert p.allocate(D) == IdMapping(START + 2 * SIZE, SIZE)


def test_free_ranges_are_those_the_next_allocations_hand_out():
    p = pool(count=4)
    p.allocate(A)
    p.allocate(B)
    p.release(A)
    free = p.free(2)
    assert free == [IdMapping(START, SIZE), IdMapping(START + 2 * SIZE, SIZE)]
    assert [p.allocate(C), p.allocate(D)] == free
    assert p.free(5) == [IdMapping(START + 3 * SIZE, SIZE)]  # no more than there are


def test_an_exhausted_pool_says_so():
    p = pool(count=2)
    p.allocate(A)
    p.allocate(B)
    with pytest.raises(InsufficientCapacity, match="all 2 host id ranges are in use"):
        p.allocate(C)


@pytest.mark.parametrize(
    ("held", "claimed", "outcome"),
    [
        ({}, IdMapping(START + SIZE, SIZE), "claimed"),
        ({"c1": START + SIZE}, IdMapping(START + SIZE, SIZE), "claimed"),  # already A's
        ({"c1": START}, IdMapping(START + SIZE, SIZE), "claimed"),  # moved: follows the task
        ({"c2": START}, IdMapping(START, SIZE), "shares host ids 1000000+ with container"),
        ({}, IdMapping(START, 4096), "maps 4096 ids"),
    ],
)
def test_claiming_a_range_found_on_the_host(held, claimed, outcome):
    p = pool(**held)
    if outcome == "claimed":
        assert p.claim(A, claimed) == claimed
        assert p.lookup(A) == claimed
        assert len(set(p.to_json().values())) == len(p.to_json())
    else:
        with pytest.raises(Conflict, match=re.escape(outcome)):
            p.claim(A, claimed)


def test_two_holders_of_one_range_are_refused():
    with pytest.raises(IdPoolError, match="same host id range"):
        pool(c1=START, c2=START)


def test_the_store_survives_a_restart_and_forgets_gone_containers(tmp_path):
    path = tmp_path / "state" / "idranges.json"
    store = IdRangeStore(path, START, SIZE, 8)
    store.allocate(A)
    store.allocate(B)
    store.allocate(C)
    again = IdRangeStore(path, START, SIZE, 8)
    assert again.lookup(B) == IdMapping(START + SIZE, SIZE)
    again.keep_only([A, C])
    assert json.loads(path.read_text()) == {str(A): START, str(C): START + 2 * SIZE}
    assert IdRangeStore(path, START, SIZE, 8).allocate(D) == IdMapping(START + SIZE, SIZE)


def test_a_damaged_pool_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "idranges.json"
    path.write_text("{not json")
    with pytest.raises(IdPoolError, match=str(path)):
        IdRangeStore(path, START, SIZE, 8)


def test_mapping_of_reads_a_processes_uid_map():
    own = mapping_of(os.getpid())
    assert own is not None and own.host_start == 0  # the initial namespace maps itself
    assert mapping_of(2**22 + 12345) is None  # no such process
