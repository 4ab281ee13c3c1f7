"""ZooKeeper observers as the deploy configures them (``tasks/zookeeper.py`` renders
``templates/zoo.cfg.j2``), for real: three voting members and one observer of Debian's
ZooKeeper on loopback addresses. The observer follows the ensemble without voting, serves
reads and watches, and forwards writes to the leader; losing it leaves the quorum whole."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from jinja2 import Template
from kazoo.client import KazooClient

from bismuth_core.zk import ZooKeeper
from tasks.rendering import JINJA, TEMPLATES
from tasks.zookeeper import Member, servers, serving, zoo_cfg_variables
from tests.support.waiting import eventually
from tests.support.zkserver import ZooKeeperServer, free_port

pytestmark = pytest.mark.integration

VOTERS = ["127.0.80.1", "127.0.80.2", "127.0.80.3"]
OBSERVER = "127.0.80.4"


def zoo_cfg(me: Member, every: list[Member], ports: tuple[int, int, int], data: Path) -> str:
    client, peer, election = ports
    variables = zoo_cfg_variables(
        me,
        every,
        tick_ms=500,
        data_dir=str(data),
        data_log_dir=str(data),
        client_port=client,
        peer_port=peer,
        election_port=election,
    )
    return Template((TEMPLATES / "zoo.cfg.j2").read_text(), **JINJA).render(**variables)


def mode(server: ZooKeeperServer) -> str | None:
    """The server's ``Mode:`` as its ``srvr`` command reports it (None: not serving)."""
    try:
        with socket.create_connection((server.address, server.port), timeout=1) as sock:
            sock.sendall(b"srvr")
            answer = b"".join(iter(lambda: sock.recv(4096), b"")).decode()
    except OSError:
        return None
    for line in answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


@pytest.fixture(scope="module")
def ensemble() -> Iterator[dict[str, ZooKeeperServer]]:
    every = servers(VOTERS, [OBSERVER])
    ports = (free_port(), free_port(), free_port())
    started: dict[str, ZooKeeperServer] = {}
    try:
        for member in every:
            server = ZooKeeperServer(
                ports[0],
                address=member.address,
                config=lambda data, member=member: zoo_cfg(member, every, ports, data),
                myid=member.id,
            )
            started[member.address] = server
            server.start(timeout=60)
        root = KazooClient(",".join(started[a].hosts for a in VOTERS))
        root.start(timeout=60)
        root.ensure_path("/observers")  # the environment's chroot
        root.stop()
        root.close()
        yield started
    finally:
        for server in started.values():
            server.cleanup()


async def connected(server_list: list[ZooKeeperServer]) -> ZooKeeper:
    zk = ZooKeeper(",".join(s.hosts for s in server_list), "observers")
    await zk.start(timeout=30)
    return zk


def test_the_deploy_numbers_observers_after_the_voters_and_sends_only_readers_to_them() -> None:
    every = servers(["10.0.0.1", "10.0.0.2", "10.0.0.3"], ["10.0.0.9", "10.0.0.2"])
    assert [(m.id, m.address, m.observer) for m in every] == [
        (1, "10.0.0.1", False),
        (2, "10.0.0.2", False),  # a voter listed as an observer too stays a voter
        (3, "10.0.0.3", False),
        (4, "10.0.0.9", True),
    ]
    assert [m.address for m in serving(every, reads=True)] == ["10.0.0.9"]
    assert [m.address for m in serving(every, reads=False)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    plain = servers(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert serving(plain, reads=True) == plain  # no observers: readers use the members


async def settled(ensemble: dict[str, ZooKeeperServer]) -> None:
    """Wait until the ensemble has a leader, two followers and an observer."""

    async def roles() -> bool:
        modes = sorted(str(mode(server)) for server in ensemble.values())
        return modes == ["follower", "follower", "leader", "observer"]

    await eventually(roles, timeout=60, what="a leader, two followers and an observer")


async def test_the_observer_follows_without_voting(ensemble: dict[str, ZooKeeperServer]) -> None:
    await settled(ensemble)
    assert mode(ensemble[OBSERVER]) == "observer"
    text = (ensemble[OBSERVER].dir / "zoo.cfg").read_text()
    assert "peerType=observer\n" in text
    assert f"server.4={OBSERVER}:" in text and text.count(":observer\n") == 1
    assert "peerType" not in (ensemble[VOTERS[0]].dir / "zoo.cfg").read_text()


async def test_reads_watches_and_writes_go_through_the_observer(
    ensemble: dict[str, ZooKeeperServer],
) -> None:
    await settled(ensemble)
    voters = await connected([ensemble[a] for a in VOTERS])
    reader = await connected([ensemble[OBSERVER]])
    try:
        await voters.ensure_path("/routes")
        # An observer applies the leader's writes a moment later than the voters: a watch set
        # through it on a znode it does not have yet would end at once (kazoo's ChildrenWatch
        # stops on a missing node).
        await eventually(lambda: reader.exists("/routes"), what="/routes on the observer")
        woken = asyncio.Event()
        await reader.watch_children("/routes", woken.set)
        woken.clear()  # it wakes once when set up
        await voters.create("/routes/a", b"to container a")
        await asyncio.wait_for(woken.wait(), 10)  # the observer's watch fired
        assert (await reader.get("/routes/a"))[0] == b"to container a"
        await reader.create("/routes/b", b"written through the observer")  # forwarded
        assert (await voters.get("/routes/b"))[0] == b"written through the observer"
    finally:
        await reader.stop()
        await voters.stop()


async def test_losing_the_observer_leaves_the_quorum_whole(
    ensemble: dict[str, ZooKeeperServer],
) -> None:
    await settled(ensemble)
    ensemble[OBSERVER].stop()
    voters = await connected([ensemble[a] for a in VOTERS])
    try:
        await voters.ensure_path("/after")
        await voters.create("/after/observer-gone", b"")
        assert await voters.exists("/after/observer-gone") is not None
    finally:
        await voters.stop()
        ensemble[OBSERVER].start(timeout=60)
