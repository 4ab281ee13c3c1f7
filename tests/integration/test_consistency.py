"""The consistency checker against a real ZooKeeper: each kind of damage, its repair, races.

Stand-ins here write no container status (``status=None``), so the damage these tests make
by hand never races with an agent.
"""

from __future__ import annotations

import json
import uuid

import pytest

from bismuth_core import cluster, consistency, layout, operations
from bismuth_core.consistency import Finding, Kind
from bismuth_core.definition import parse_definition
from bismuth_core.layout import Backend, ContainerRecord, ContainerStatus, Reservation
from bismuth_core.zk import ZooKeeper, create, delete, set_data

pytestmark = pytest.mark.integration


def definition(hosts: tuple[str, ...] = ("app.test",), max_instances: int = 1):
    return parse_definition(
        {
            "image": "bismuth.local/python:3.11",
            "cpu": 0.25,
            "memory": 64 << 20,
            "invoke_mode": {"Executable": ["/bin/true"]},
            "max_instances": max_instances,
            "routes": [{"hostname": h} for h in hosts],
        }
    )


async def backend_of(zk: ZooKeeper, fid: uuid.UUID) -> Backend:
    (backend,) = (await cluster.read_function(zk, fid)).backends
    return backend


async def remove_container(zk: ZooKeeper, b: Backend) -> None:
    """Delete a container znode (status first) and release its reservation, as a function
    delete does, but leave the function listing it."""
    await zk.commit(await operations.remove_containers_ops(zk, [b]))


async def add_container(zk: ZooKeeper, b: Backend, data: bytes) -> None:
    """Write a container znode by hand, reserving its share on the node as the control
    plane would, so that only the damage a test means to make is there."""
    try:
        share = ContainerRecord.decode(data)
        cpu, memory = share.cpu, share.memory
    except ValueError:
        cpu, memory = 0.0, 0
    current, stat = await zk.get(layout.containers_path(b.ip))
    reserved = Reservation.decode(current).plus(cpu, memory, 1)
    await zk.commit(
        [
            set_data(layout.containers_path(b.ip), reserved.encode(), stat.version),
            create(layout.container_path(b.ip, b.container_id), data),
        ]
    )


def kinds_by_path(findings: list[Finding] | tuple[Finding, ...]) -> dict[str, Kind]:
    return {f.path: f.kind for f in findings}


async def test_clean_cluster_has_no_findings(zk, standins):
    await standins.add(status=None)
    await operations.create_function(zk, definition())
    assert await consistency.check(zk) == []


async def test_each_kind_of_damage_is_found_and_repaired(zk, standins):
    agent = await standins.add(status=None)
    ip = agent.ip
    kept = await operations.create_function(zk, definition(("kept.test",)))
    lost = await operations.create_function(zk, definition(("lost.test",)))
    lost_backend = await backend_of(zk, lost)

    orphan = Backend(ip, uuid.uuid4())  # its function does not exist
    unlisted = Backend(ip, uuid.uuid4())  # its function exists but does not list it
    garbage = Backend(ip, uuid.uuid4())  # data is not a function UUID
    await zk.commit(
        [
            create(
                layout.container_path(ip, orphan.container_id),
                ContainerRecord(uuid.uuid4(), 0.1, 1 << 20).encode(),
            ),
            create(
                layout.status_path(ip, orphan.container_id),
                layout.encode_status(ContainerStatus.RUNNING),
            ),
            create(
                layout.container_path(ip, unlisted.container_id), ContainerRecord(kept).encode()
            ),
            create(layout.container_path(ip, garbage.container_id), b"xx"),
            create(layout.route_path("ghost.test"), layout.encode_route(uuid.uuid4())),
            create(layout.route_path("stolen.test"), layout.encode_route(kept)),
            create(layout.route_path("garbled.test"), b"not a uuid"),
            delete(layout.route_path("kept.test")),
        ]
    )
    await remove_container(zk, lost_backend)

    found = await consistency.check(zk)
    assert kinds_by_path(found) == {
        layout.container_path(ip, orphan.container_id): Kind.ORPHAN_CONTAINER,
        layout.container_path(ip, unlisted.container_id): Kind.ORPHAN_CONTAINER,
        layout.backends_path(lost): Kind.BACKEND_WITHOUT_CONTAINER,
        layout.route_path("ghost.test"): Kind.ROUTE_TO_MISSING_FUNCTION,
        layout.route_path("stolen.test"): Kind.ROUTE_TO_MISSING_FUNCTION,
        layout.route_path("kept.test"): Kind.MISSING_ROUTE,
        layout.container_path(ip, garbage.container_id): Kind.UNDECODABLE,
        layout.route_path("garbled.test"): Kind.UNDECODABLE,
    }
    by_path = {f.path: f for f in found}
    assert "does not exist" in by_path[layout.container_path(ip, orphan.container_id)].detail
    assert "does not list" in by_path[layout.route_path("stolen.test")].detail
    assert str(lost_backend.container_id) in by_path[layout.backends_path(lost)].detail

    repaired = await consistency.repair(zk, found)
    assert set(repaired) == set(found)
    # Containers written and removed by hand never updated the node's reservation; that
    # shows once the undecodable container (whose share is unknowable) is gone.
    (drift,) = await consistency.check(zk)
    assert drift.kind == Kind.RESERVATION_DRIFT and drift.path == layout.containers_path(ip)
    assert "1 container(s)" in drift.detail  # only the kept function's container is left
    assert await consistency.repair(zk, [drift]) == [drift]
    assert await consistency.check(zk) == []
    node = await cluster.read_node(zk, ip)
    assert node is not None and node.reserved.containers == 1

    for b in (orphan, unlisted, garbage):
        assert await zk.exists(layout.container_path(ip, b.container_id)) is None
    assert sorted(await zk.children(layout.ROUTES)) == ["kept.test", "lost.test"]
    assert layout.decode_route((await zk.get(layout.route_path("kept.test")))[0]) == kept
    assert (await cluster.read_function(zk, lost)).backends == ()
    assert (await cluster.read_function(zk, kept)).backends == (await backend_of(zk, kept),)


async def test_rollout_of_a_missing_function_is_removed(zk):
    fid = uuid.uuid4()
    await zk.create(layout.retiring_path(fid), b"")
    (finding,) = await consistency.check(zk)
    assert finding.kind == Kind.ORPHAN_ROLLOUT and str(fid) in finding.detail
    assert await consistency.repair(zk, [finding]) == [finding]
    assert await zk.exists(layout.retiring_path(fid)) is None


async def test_missing_backend_is_removed_from_retiring_too(zk, standins):
    await standins.add(status=None)
    fid = await operations.create_function(zk, definition())
    backend = await backend_of(zk, fid)
    await zk.create(layout.retiring_path(fid), layout.pack_backends([backend]))
    await remove_container(zk, backend)

    (finding,) = await consistency.check(zk)
    assert finding.kind == Kind.BACKEND_WITHOUT_CONTAINER and finding.backend == backend
    assert await consistency.repair(zk, [finding]) == [finding]
    view = await cluster.read_function(zk, fid)
    assert view.backends == () and view.retiring == () and view.retiring_version is None


async def test_findings_that_no_longer_hold_are_skipped(zk, standins):
    agent = await standins.add(status=None)
    fid = await operations.create_function(zk, definition())
    backend = await backend_of(zk, fid)
    await remove_container(zk, backend)
    await zk.delete(layout.route_path("app.test"))
    orphan = Backend(agent.ip, uuid.uuid4())
    await add_container(zk, orphan, ContainerRecord(fid).encode())
    found = await consistency.check(zk)
    assert {f.kind for f in found} == {
        Kind.BACKEND_WITHOUT_CONTAINER,
        Kind.MISSING_ROUTE,
        Kind.ORPHAN_CONTAINER,
    }

    # Meanwhile, someone else sets each of them right (or differently).
    await add_container(zk, backend, ContainerRecord(fid).encode())
    await zk.create(layout.route_path("app.test"), layout.encode_route(fid))
    await remove_container(zk, orphan)

    assert await consistency.repair(zk, found) == []
    assert (await cluster.read_function(zk, fid)).backends == (backend,)
    assert await consistency.check(zk) == []


async def test_undecodable_definitions_are_reported_but_left_alone(zk, standins):
    await standins.add(status=None)
    fid = await operations.create_function(zk, definition())
    await zk.set(layout.function_path(fid), b"{not json")
    await zk.create(layout.node_path("10.9.9.9"), b"garbage")

    report = await consistency.check_and_repair(zk)
    assert kinds_by_path(report.found) == {
        layout.function_path(fid): Kind.UNDECODABLE,
        layout.node_path("10.9.9.9"): Kind.UNDECODABLE,
    }
    assert report.repaired == ()
    assert report.remaining == report.found
    # Its route and container are not judged against a definition nobody can read.
    assert await zk.exists(layout.route_path("app.test")) is not None
    assert (await zk.get(layout.function_path(fid)))[0] == b"{not json"


async def test_one_repair_revealing_another_is_finished_in_later_passes(zk, standins):
    await standins.add(status=None)
    fid = await operations.create_function(zk, definition())
    backend = await backend_of(zk, fid)
    await zk.set(layout.container_path(backend.ip, backend.container_id), b"??")

    report = await consistency.check_and_repair(zk)
    assert [f.kind for f in report.found] == [Kind.UNDECODABLE]
    # The undecodable container's share of cpu and memory was unknowable, so removing it
    # leaves the node's reservation to be rewritten from the containers in a later pass.
    assert [f.kind for f in report.repaired] == [
        Kind.UNDECODABLE,
        Kind.BACKEND_WITHOUT_CONTAINER,
        Kind.RESERVATION_DRIFT,
    ]
    assert report.remaining == ()
    assert (await cluster.read_function(zk, fid)).backends == ()


def test_finding_json_names_kind_path_and_subject():
    fid, cid = uuid.uuid4(), uuid.uuid4()
    finding = Finding(
        Kind.BACKEND_WITHOUT_CONTAINER,
        layout.backends_path(fid),
        "lists a backend without container",
        fid,
        Backend("10.0.0.1", cid),
    )
    assert json.loads(json.dumps(finding.to_json())) == {
        "kind": "backend-without-container",
        "path": f"/function/{fid}/backends",
        "detail": "lists a backend without container",
        "function_id": str(fid),
        "backend": {"ip": "10.0.0.1", "container_id": str(cid)},
    }
