"""Group commit against a real ZooKeeper: multi-ops sent together land as one transaction,
each caller still gets its own answer, and one caller's failure costs the others nothing.
Through the fleet cache: concurrent creates share transactions, place correctly (no node
over-committed, replicas on distinct nodes), and a create that fails in a group leaves no
znode behind; through the API the failing request alone gets a 4xx JSON error."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bismuth_core import cluster, layout, operations
from bismuth_core.errors import Conflict, InsufficientCapacity
from bismuth_core.groupcommit import GroupCommit
from bismuth_core.zk import (
    BadVersionError,
    NodeExistsError,
    TransactionFailed,
    ZooKeeper,
    create,
    set_data,
)
from tests.integration.test_fleet_cache import NODES, fleet, reservations_match
from tests.integration.test_operations import definition
from tests.support.apiserver import definition as api_definition

pytestmark = pytest.mark.integration

__all__ = ["fleet"]  # the fixture: three live nodes with room for two containers each


async def czxid(zk: ZooKeeper, path: str) -> int:
    stat = await zk.exists(path)
    assert stat is not None, path
    return int(stat.czxid)


async def test_callers_sent_together_share_one_transaction(zk):
    group = GroupCommit(zk)
    await zk.ensure_path("/gc")
    results = await asyncio.gather(
        *(group.commit([create(f"/gc/{i}", b"x"), create(f"/gc/{i}/child")]) for i in range(5))
    )
    assert results == [[f"/gc/{i}", f"/gc/{i}/child"] for i in range(5)]
    assert len({await czxid(zk, f"/gc/{i}") for i in range(5)}) == 1


async def test_each_group_answered_is_observed_with_its_callers_and_wait(zk):
    seen: list[tuple[int, float]] = []
    group = GroupCommit(zk, observe=lambda callers, seconds: seen.append((callers, seconds)))
    await zk.ensure_path("/gc")
    await asyncio.gather(*(group.commit([create(f"/gc/o{i}", b"x")]) for i in range(4)))
    await group.commit([create("/gc/alone", b"x")])
    assert [callers for callers, _ in seen] == [4, 1]
    assert all(0 < seconds < 30 for _, seconds in seen)


async def test_a_group_stays_under_its_size(zk):
    group = GroupCommit(zk, max_bytes=200)
    await zk.ensure_path("/gc")
    big = b"x" * 150  # two of them would pass the limit: each goes in a group of its own
    await asyncio.gather(*(group.commit([create(f"/gc/big{i}", big)]) for i in range(3)))
    assert len({await czxid(zk, f"/gc/big{i}") for i in range(3)}) == 3
    assert [(await zk.get(f"/gc/big{i}"))[0] for i in range(3)] == [big] * 3


async def test_a_failing_caller_fails_alone_and_leaves_nothing(zk):
    group = GroupCommit(zk)
    await zk.ensure_path("/gc/taken")
    outcomes = await asyncio.gather(
        group.commit([create("/gc/a")]),
        group.commit([create("/gc/b"), create("/gc/taken")]),  # its second op fails
        group.commit([create("/gc/c")]),
        return_exceptions=True,
    )
    failed = outcomes[1]
    assert isinstance(failed, TransactionFailed) and failed.index == 1
    assert isinstance(failed.cause, NodeExistsError)
    assert outcomes[0] == ["/gc/a"] and outcomes[2] == ["/gc/c"]
    assert await zk.exists("/gc/b") is None  # nothing of the failed caller
    assert await czxid(zk, "/gc/a") == await czxid(zk, "/gc/c")  # the rest, sent again together


async def test_a_caller_building_on_a_failed_write_loses_a_race(zk):
    group = GroupCommit(zk)
    await zk.ensure_path("/gc/taken")
    await zk.create("/gc/shared", b"0")
    outcomes = await asyncio.gather(
        group.commit([set_data("/gc/shared", b"1", 0), create("/gc/taken")]),
        group.commit([set_data("/gc/shared", b"2", 1)]),  # counts on the first one's write
        group.commit([create("/gc/free")]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], TransactionFailed) and outcomes[0].index == 1
    assert isinstance(outcomes[1], TransactionFailed)
    assert isinstance(outcomes[1].cause, BadVersionError) and outcomes[1].index == 0
    assert outcomes[2] == ["/gc/free"]
    assert (await zk.get("/gc/shared"))[0] == b"0"


async def test_concurrent_creates_share_transactions_and_place_correctly(zk, fleet):
    fids = await asyncio.gather(
        *(
            operations.create_function(zk, definition(2, hosts=(f"c{i}.test",)), fleet)
            for i in range(3)
        )
    )
    assert await reservations_match(zk) == dict.fromkeys(NODES, 2)
    for fid in fids:
        view = await cluster.read_function(zk, fid)
        assert len({b.ip for b in view.backends}) == 2  # replicas on distinct nodes
    zxids = {await czxid(zk, layout.function_path(fid)) for fid in fids}
    assert len(zxids) < len(fids)  # some were committed together


async def test_capacity_runs_out_within_a_group(zk, fleet):
    outcomes = await asyncio.gather(
        *(
            operations.create_function(zk, definition(3, hosts=(f"c{i}.test",)), fleet)
            for i in range(4)
        ),
        return_exceptions=True,
    )
    made = [o for o in outcomes if isinstance(o, uuid.UUID)]
    assert len(made) == 2  # 6 places: two functions of 3
    assert all(isinstance(o, InsufficientCapacity) for o in outcomes if o not in made)
    assert await reservations_match(zk) == dict.fromkeys(NODES, 2)
    assert sorted(await cluster.function_ids(zk)) == sorted(made)


async def test_a_taken_hostname_fails_only_its_create(zk, fleet):
    def make(host: str):  # type: ignore[no-untyped-def]
        return operations.create_function(zk, definition(1, hosts=(host,)), fleet)

    first = await make("taken.test")
    outcomes = await asyncio.gather(
        make("fa.test"),
        make("fb.test"),
        make("taken.test"),
        make("fc.test"),
        make("fd.test"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], Conflict) and str(first) in str(outcomes[2])
    assert all(isinstance(o, uuid.UUID) for i, o in enumerate(outcomes) if i != 2)
    assert sorted(await cluster.function_ids(zk)) == sorted([first, *outcomes[:2], *outcomes[3:]])
    assert sum((await reservations_match(zk)).values()) == 5  # nothing for the refused one


async def test_api_answers_each_create_of_a_burst_on_its_own(api, standins, http):
    for _ in range(3):
        await standins.add()
    taken = api_definition(routes=[{"hostname": "taken.example"}])
    async with http.post(f"{api.url}/function", json=taken) as resp:
        assert resp.status == 200

    async def post(body: bytes) -> tuple[int, dict[str, object]]:
        async with http.post(f"{api.url}/function", data=body) as resp:
            return resp.status, await resp.json()

    good = [
        json.dumps(api_definition(routes=[{"hostname": f"g{i}.example"}])).encode()
        for i in range(6)
    ]
    answers = await asyncio.gather(
        *(post(b) for b in good[:3]),
        post(json.dumps(taken).encode()),
        post(b'{"image": '),
        *(post(b) for b in good[3:]),
    )
    assert answers[3][0] == 409 and "taken.example" in str(answers[3][1]["error"])
    assert answers[4][0] == 400 and "error" in answers[4][1]
    assert [a[0] for i, a in enumerate(answers) if i not in (3, 4)] == [200] * 6
    made = {a[1]["id"] for i, a in enumerate(answers) if i not in (3, 4)}
    listed = {str(f) for f in await cluster.function_ids(standins.zk)}
    assert made < listed and len(listed) == 7  # the six, the first, nothing of the refused
    routes = set(await standins.zk.children(layout.ROUTES))
    assert routes == {"taken.example", *(f"g{i}.example" for i in range(6))}

    # the API's metrics count each multi-op of placements and the placements it carried
    async with http.get(f"{api.url}/metrics") as resp:
        metrics = {
            s.name: s.value
            for family in text_string_to_metric_families(await resp.text())
            for s in family.samples
        }
    groups = metrics["bismuth_api_placement_commit_callers_count"]
    assert metrics["bismuth_api_placement_commit_seconds_count"] == groups
    # the first create and the seven of the burst that reached ZooKeeper (the taken
    # hostname's too: its group was rolled back, and the others in it sent again)
    assert metrics["bismuth_api_placement_commit_callers_sum"] >= 8
    assert metrics["bismuth_api_placement_commit_seconds_sum"] > 0
