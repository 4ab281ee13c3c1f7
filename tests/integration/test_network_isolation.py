"""Container networking end to end, as root: real veths, namespaces, tc and nftables.

Each test builds its own small world of network namespaces and deletes it afterwards:

- ``host`` plays the agent's host (the adapter's ``host_netns``): containers' host ends, the
  firewall table, and listeners standing in for the provider and the host's daemons;
- ``a``, ``b`` play containers (``eth0`` is the peer that setup moves in);
- ``lan`` is a private neighbour of the host (192.168.77.1, host side .2);
- ``world`` is the internet: the router 198.51.100.1 on the host's uplink (host side .2,
  the host's default route), serving on 203.0.113.10 beyond it.

The machine's own namespace is never changed, and only addresses inside these namespaces are
contacted. "Cannot connect" means the connection attempt times out: the firewall drops.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from bismuth_agent.network import (
    Allocation,
    AllocationStore,
    Firewall,
    HostView,
    NetworkAdapter,
    NetworkSettings,
    SysctlChange,
)
from bismuth_agent.network.namespaces import run_in_netns
from bismuth_agent.network.ruleset import LEGACY_FORWARDING_GUARD
from bismuth_core.errors import Conflict, NotFound

pytestmark = pytest.mark.integration

NETNS_DIR = Path("/run/netns")
WORLD = "203.0.113.10"  # a public-looking address beyond the host's router
ROUTER = "198.51.100.1"  # the host's neighbour on its uplink
HOST_UPLINK = "198.51.100.2"  # the host's own address
LAN = "192.168.77.1"
DROP_TIMEOUT = 0.5  # a dropped connection attempt: waiting longer would show nothing new
CONNECT_TIMEOUT = 5.0  # generous for what must connect, so a slow machine never fails a test


def sh(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


class Lab:
    """Network namespaces made for one test, deleted (with all they hold) at the end."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.names: list[str] = []
        self.servers: list[asyncio.Server] = []

    def name(self, role: str) -> str:
        return f"bnt-{self.tag}-{role}"

    def netns(self, role: str) -> str:
        name = self.name(role)
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(
        self, ns: str, ifname: str, peer_ns: str, peer: str, addr: str, peer_addr: str
    ) -> None:
        sh("ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", peer, "netns", peer_ns)
        for where, name, address in ((ns, ifname, addr), (peer_ns, peer, peer_addr)):
            sh("ip", "-n", where, "addr", "add", address, "dev", name)
            sh("ip", "-n", where, "link", "set", name, "up")

    async def serve(self, ns: str, address: str, port: int, name: str) -> None:
        """A listener that answers ``<name> <peer address>`` and closes."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(f"{name} {writer.get_extra_info('peername')[0]}\n".encode())
            await writer.drain()
            writer.close()

        sock = await asyncio.to_thread(run_in_netns, path(ns), lambda: _listening(address, port))
        self.servers.append(await asyncio.start_server(answer, sock=sock))

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def path(ns: str) -> str:
    return str(NETNS_DIR / ns)


def _listening(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def connect(
    ns: str, address: str, port: int, timeout: float = CONNECT_TIMEOUT, source: str = ""
) -> socket.socket:
    sock = await asyncio.to_thread(run_in_netns, path(ns), socket.socket)
    sock.setblocking(False)
    if source:
        sock.bind((source, 0))
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout
        )
    except BaseException:
        sock.close()
        raise
    return sock


async def unreachable(targets: dict[str, tuple[str, str, int, str]]) -> dict[str, str]:
    """Probe ``{label: (ns, address, port, source)}`` at once; "timeout" = dropped."""
    seen = await asyncio.gather(*(probe(*t, timeout=DROP_TIMEOUT) for t in targets.values()))
    return dict(zip(targets, seen, strict=True))


async def probe(
    ns: str, address: str, port: int, source: str = "", timeout: float = CONNECT_TIMEOUT
) -> str:
    """What a client in ``ns`` gets from ``address:port``: the banner, or why not."""
    try:
        sock = await connect(ns, address, port, timeout, source)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error {exc.strerror}"
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()


@dataclass
class Node:
    """The host side as the agent would wire it: settings, adapter and firewall."""

    lab: Lab
    host: str
    settings: NetworkSettings
    adapter: NetworkAdapter
    firewall: Firewall

    async def container(self, role: str, attach: bool = True) -> Container:
        ns = self.lab.netns(role)
        cid = str(uuid.uuid4())
        allocation = await self.adapter.setup(cid, path(ns))
        if attach:
            await self.firewall.attach(allocation)
        return Container(ns, cid, allocation)

    def restarted(self, **changes: object) -> Node:
        """A new agent process on the same host and state file."""
        settings = replace(self.settings, **changes)  # type: ignore[arg-type]
        return Node(self.lab, self.host, settings, NetworkAdapter(settings), Firewall(settings))

    def links(self) -> dict[str, dict]:
        return {
            link["ifname"]: link for link in json.loads(sh("ip", "-n", self.host, "-j", "link"))
        }


@dataclass
class Container:
    ns: str
    cid: str
    allocation: Allocation

    @property
    def ip(self) -> str:
        return str(self.allocation.container_address)

    @property
    def host_ip(self) -> str:
        return str(self.allocation.host_address)


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def node_settings(lab: Lab, tmp_path: Path) -> NetworkSettings:
    """A host namespace with an uplink to the world and a private LAN neighbour."""
    host, world, neighbour = lab.netns("host"), lab.netns("world"), lab.netns("lan")
    lab.link(host, "wan0", world, "up0", f"{HOST_UPLINK}/24", f"{ROUTER}/24")
    lab.link(host, "lan0", neighbour, "eth0", "192.168.77.2/24", f"{LAN}/24")
    sh("ip", "-n", world, "addr", "add", f"{WORLD}/32", "dev", "lo")
    sh("ip", "-n", host, "route", "add", "default", "via", ROUTER)
    return NetworkSettings(
        firewall_id=f"t{lab.tag}",
        interface_group=0xB150,
        state_file=str(tmp_path / "network" / "allocations.json"),
        host_netns=path(host),
    )


@pytest.fixture
async def node(lab: Lab, node_settings: NetworkSettings) -> AsyncIterator[Node]:
    adapter = NetworkAdapter(node_settings)
    firewall = Firewall(node_settings)
    await firewall.install(await adapter.host_view())
    yield Node(lab, lab.name("host"), node_settings, adapter, firewall)
    await firewall.remove_all()


def ipv4_addresses(ns: str, ifname: str) -> list[str]:
    shown = json.loads(sh("ip", "-n", ns, "-j", "addr", "show", ifname))[0]["addr_info"]
    return [f"{i['local']}/{i['prefixlen']}" for i in shown if i["family"] == "inet"]


def route_back_from_world(lab: Lab, node: Node) -> None:
    """The world's route to the container pool (what a fleet's router would hold)."""
    sh("ip", "-n", lab.name("world"), "route", "add", node.settings.pool, "via", HOST_UPLINK)


async def test_setup_wires_each_container_into_its_own_subnet(node: Node) -> None:
    a = await node.container("a")
    b = await node.container("b")
    assert a.allocation.subnet != b.allocation.subnet
    assert a.allocation.subnet.subnet_of(IPv4Network(node.settings.pool))

    host_end = node.links()[a.allocation.ifname]
    assert len(a.allocation.ifname) <= 15
    assert host_end["ifalias"] == a.cid
    assert "UP" in host_end["flags"]
    assert ipv4_addresses(node.host, a.allocation.ifname) == [f"{a.host_ip}/30"]
    assert ipv4_addresses(a.ns, "eth0") == [f"{a.ip}/30"]
    assert "UP" in json.loads(sh("ip", "-n", a.ns, "-j", "link", "show", "eth0"))[0]["flags"]
    routes = json.loads(sh("ip", "-n", a.ns, "-j", "route", "show", "default"))
    assert [(r["gateway"], r["dev"]) for r in routes] == [(a.host_ip, "eth0")]
    assert "UP" in json.loads(sh("ip", "-n", a.ns, "-j", "link", "show", "lo"))[0]["flags"]

    listed = {i.container_id: i for i in await node.adapter.list()}
    assert set(listed) == {a.cid, b.cid}
    assert listed[a.cid].ifname == a.allocation.ifname
    assert listed[a.cid].up and listed[a.cid].addresses == (a.allocation.host_interface,)
    qdiscs = json.loads(
        sh("tc", "-n", node.host, "-j", "qdisc", "show", "dev", a.allocation.ifname)
    )
    assert "tbf" not in {q["kind"] for q in qdiscs}  # no rate limit unless configured


async def test_setup_twice_changes_nothing(node: Node) -> None:
    a = await node.container("a")
    index = node.links()[a.allocation.ifname]["ifindex"]
    assert await node.adapter.setup(a.cid, path(a.ns)) == a.allocation
    assert node.links()[a.allocation.ifname]["ifindex"] == index
    assert await probe(a.ns, node.settings.metadata_address, 9000) == "refused"  # no provider yet


async def test_container_reaches_its_provider_and_the_world_only(lab: Lab, node: Node) -> None:
    a, b = await node.container("a"), await node.container("b")
    route_back_from_world(lab, node)
    host, port = node.host, node.settings.provider_port
    await lab.serve(host, a.host_ip, port, "provider-a")
    await lab.serve(host, b.host_ip, port, "provider-b")
    await lab.serve(host, a.host_ip, 8001, "daemon-on-a-side")
    await lab.serve(host, HOST_UPLINK, 8001, "daemon")
    await lab.serve(b.ns, b.ip, 8080, "app-b")
    await lab.serve(lab.name("lan"), LAN, 80, "lan")
    await lab.serve(lab.name("world"), ROUTER, 80, "router")
    await lab.serve(lab.name("world"), WORLD, 80, "world")

    metadata = node.settings.metadata_address
    seen = await asyncio.gather(
        probe(a.ns, a.host_ip, port),
        probe(a.ns, metadata, port),
        probe(b.ns, metadata, port),
        probe(a.ns, WORLD, 80),
    )
    assert seen == [
        f"provider-a {a.ip}",  # its own provider address
        f"provider-a {a.ip}",  # the same, as 169.254.169.254:9000
        f"provider-b {b.ip}",  # each container gets its own through the metadata address
        f"world {a.ip}",  # the outside world, without NAT by default
    ]
    blocked = {
        "another container's provider": (a.ns, b.host_ip, port, ""),
        "another container": (a.ns, b.ip, 8080, ""),
        "the host's daemon ports": (a.ns, a.host_ip, 8001, ""),
        "the host's other addresses": (a.ns, HOST_UPLINK, 8001, ""),
        "private ranges": (a.ns, LAN, 80, ""),
        "the host's neighbours, even public": (a.ns, ROUTER, 80, ""),
        "the metadata address, other ports": (a.ns, metadata, 80, ""),
        "connections from outside into it": (lab.name("world"), b.ip, 8080, WORLD),
    }
    assert await unreachable(blocked) == dict.fromkeys(blocked, "timeout")


async def test_container_cannot_send_with_another_source_address(lab: Lab, node: Node) -> None:
    a, b = await node.container("a"), await node.container("b")
    sh("ip", "-n", a.ns, "addr", "add", f"{b.ip}/32", "dev", "eth0")  # root inside A could
    heard: asyncio.Queue[str] = asyncio.Queue()

    class Recorder(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            heard.put_nowait(f"{data.decode()} from {addr[0]}")

    receiver = await asyncio.to_thread(
        run_in_netns, path(lab.name("world")), lambda: _datagram_socket(WORLD, 5353)
    )
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Recorder, sock=receiver
    )
    try:
        for source, text in ((b.ip, "spoofed"), (a.ip, "genuine")):  # one path: kept in order
            sender = await asyncio.to_thread(
                run_in_netns, path(a.ns), lambda s=source: _datagram_socket(s, 0)
            )
            sender.sendto(text.encode(), (WORLD, 5353))
            sender.close()
        assert await asyncio.wait_for(heard.get(), 5) == f"genuine from {a.ip}"
        assert heard.empty()
    finally:
        transport.close()


def _datagram_socket(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.setblocking(False)
    return sock


async def test_host_traffic_is_unchanged(lab: Lab, node: Node) -> None:
    a = await node.container("a")
    await lab.serve(a.ns, a.ip, 8080, "app-a")
    await lab.serve(lab.name("lan"), LAN, 80, "lan")
    await lab.serve(lab.name("world"), WORLD, 80, "world")
    await lab.serve(node.host, HOST_UPLINK, 8001, "daemon")
    seen = await asyncio.gather(
        probe(node.host, a.ip, 8080),  # the agent's proxy into a container
        probe(node.host, LAN, 80),
        probe(node.host, WORLD, 80),
        probe(lab.name("world"), HOST_UPLINK, 8001),  # the host's daemons for its neighbours
    )
    assert seen == [
        f"app-a {a.host_ip}",
        "lan 192.168.77.2",
        f"world {HOST_UPLINK}",
        f"daemon {ROUTER}",
    ]


async def test_masquerade_setting_hides_container_addresses(
    lab: Lab, node_settings: NetworkSettings
) -> None:
    settings = replace(node_settings, masquerade=True)
    node = Node(lab, lab.name("host"), settings, NetworkAdapter(settings), Firewall(settings))
    await node.firewall.install(await node.adapter.host_view())
    a = await node.container("a")
    await lab.serve(lab.name("world"), WORLD, 80, "world")  # the world has no route to the pool
    assert await probe(a.ns, WORLD, 80) == f"world {HOST_UPLINK}"
    await node.firewall.remove_all()


async def test_teardown_removes_veth_elements_and_allocation(lab: Lab, node: Node) -> None:
    a, b = await node.container("a"), await node.container("b")
    port = node.settings.provider_port
    await lab.serve(node.host, b.host_ip, port, "provider-b")

    await node.firewall.detach(a.allocation.ifname)
    await node.adapter.teardown(a.cid)

    assert a.allocation.ifname not in node.links()
    assert sh("ip", "-n", a.ns, "-o", "link").count("eth0") == 0
    assert [i.container_id for i in await node.adapter.list()] == [b.cid]
    elements = await node.firewall.elements()
    assert all(key[0] == b.allocation.ifname for keys in elements.values() for key in keys)
    assert sum(len(keys) for keys in elements.values()) == 3
    assert a.cid not in json.loads(Path(node.settings.state_file).read_text())["allocations"]
    assert await probe(b.ns, node.settings.metadata_address, port) == f"provider-b {b.ip}"

    await node.firewall.detach(a.allocation.ifname)  # removing twice is fine
    await node.adapter.teardown(a.cid)
    await node.adapter.teardown(str(uuid.uuid4()))  # as is removing what never existed


async def test_restarted_agent_adopts_networks_without_recreating_them(
    lab: Lab, node: Node
) -> None:
    a = await node.container("a")
    port = node.settings.provider_port
    await lab.serve(node.host, a.host_ip, port, "provider-a")
    index = node.links()[a.allocation.ifname]["ifindex"]

    again = node.restarted()
    await again.firewall.install(await again.adapter.host_view())
    assert await probe(a.ns, node.settings.metadata_address, port) == f"provider-a {a.ip}"
    assert await again.adapter.adopt(a.cid, path(a.ns)) == a.allocation
    await again.firewall.attach(a.allocation)
    assert node.links()[a.allocation.ifname]["ifindex"] == index
    assert await probe(a.ns, node.settings.metadata_address, port) == f"provider-a {a.ip}"

    b = await again.container("b")
    assert b.allocation.subnet != a.allocation.subnet
    with pytest.raises(NotFound):
        await again.adapter.adopt(str(uuid.uuid4()))


async def test_lost_state_is_rebuilt_from_the_host_and_leftovers_are_listed(node: Node) -> None:
    a = await node.container("a")
    Path(node.settings.state_file).unlink()

    again = node.restarted()
    assert [(i.container_id, i.ifname) for i in await again.adapter.list()] == [
        (a.cid, a.allocation.ifname)
    ]
    assert await again.adapter.adopt(a.cid, path(a.ns)) == a.allocation
    assert again.adapter.allocations.lookup(a.cid) == a.allocation

    await again.adapter.teardown(a.cid)  # reaping a leftover
    assert await again.adapter.list() == []


async def test_allocations_survive_reloading_the_state_file(node: Node) -> None:
    a, b = await node.container("a", attach=False), await node.container("b", attach=False)
    reloaded = AllocationStore(node.settings.state_file, node.settings.pool_network)
    assert reloaded.lookup(a.cid) == a.allocation
    assert reloaded.lookup(b.cid) == b.allocation
    third = reloaded.reserve(str(uuid.uuid4()))
    assert third.subnet not in {a.allocation.subnet, b.allocation.subnet}


AGENT_IN_ITS_OWN_NAMESPACE = """
import asyncio, dataclasses, json, sys
from bismuth_agent.network import Firewall, NetworkAdapter, NetworkSettings

async def main(cid, netns, state_file, firewall_id):
    settings = NetworkSettings(state_file=state_file, firewall_id=firewall_id)
    adapter, firewall = NetworkAdapter(settings), Firewall(settings)
    changes = await firewall.install(await adapter.host_view())
    allocation = await adapter.setup(cid, netns)
    await firewall.attach(allocation)
    print(json.dumps({"host": str(allocation.host_address), "changes": len(changes),
                      "listed": [i.container_id for i in await adapter.list()]}))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_default_settings_act_on_the_agents_own_namespace(
    lab: Lab, node_settings: NetworkSettings, tmp_path: Path
) -> None:
    """With no ``host_netns`` (production), everything happens where the agent runs."""
    host, a = lab.name("host"), lab.netns("a")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    cid = str(uuid.uuid4())
    command = ["ip", "netns", "exec", host, sys.executable, "-c", AGENT_IN_ITS_OWN_NAMESPACE]
    args = [cid, path(a), str(tmp_path / "state.json"), node_settings.firewall_id]
    report = json.loads(sh(*command, *args))
    assert report == {"host": "10.253.0.1", "changes": 2, "listed": [cid]}  # lan0, wan0
    await lab.serve(host, "10.253.0.1", 9000, "provider")
    assert await probe(a, "169.254.169.254", 9000) == "provider 10.253.0.2"
    assert await unreachable({"host": (a, HOST_UPLINK, 22, "")}) == {"host": "timeout"}


async def test_setup_failures_leave_nothing_behind(lab: Lab, node: Node) -> None:
    cid = str(uuid.uuid4())
    with pytest.raises(NotFound):
        await node.adapter.setup(cid, path(lab.name("missing")))
    taken = lab.netns("taken")
    sh("ip", "-n", taken, "link", "add", "eth0", "type", "veth", "peer", "other0")
    with pytest.raises(Conflict):
        await node.adapter.setup(cid, path(taken))
    assert await node.adapter.list() == []
    assert node.adapter.allocations.allocations() == []


async def test_rate_limits_shape_both_directions(lab: Lab, node_settings: NetworkSettings) -> None:
    rate, burst = 8_000_000, 32768  # 1 MB/s
    settings = replace(node_settings, download_rate=rate, upload_rate=rate, rate_burst=burst)
    node = Node(lab, lab.name("host"), settings, NetworkAdapter(settings), Firewall(settings))
    a = await node.container("a", attach=False)  # shaping does not depend on the firewall
    qdiscs = json.loads(
        sh("tc", "-n", node.host, "-j", "qdisc", "show", "dev", a.allocation.ifname)
    )
    assert [(q["kind"], q["options"]["rate"]) for q in qdiscs if q.get("root")] == [
        ("tbf", rate // 8)
    ]

    size = 512 * 1024
    least = (size - burst) / (rate / 8)  # a token bucket cannot pass more than burst + rate*t
    assert await transfer(node.host, a.ns, a.ip, size) >= least * 0.95  # into the container
    assert await transfer(a.ns, node.host, a.host_ip, size) >= least * 0.95  # out of it

    unlimited = node.restarted(download_rate=0, upload_rate=0)
    await unlimited.adapter.adopt(a.cid, path(a.ns))
    qdiscs = json.loads(
        sh("tc", "-n", node.host, "-j", "qdisc", "show", "dev", a.allocation.ifname)
    )
    assert "tbf" not in {q["kind"] for q in qdiscs}


async def transfer(sender: str, receiver: str, address: str, size: int) -> float:
    """Seconds to send ``size`` bytes from ``sender`` to a sink in ``receiver`` (until acked)."""
    received = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while chunk := await reader.read(65536):
            total += len(chunk)
            if total >= size:
                break
        writer.write(b"done\n")
        await writer.drain()
        writer.close()
        received.set_result(total)

    sock = await asyncio.to_thread(run_in_netns, path(receiver), lambda: _listening(address, 0))
    port = sock.getsockname()[1]
    server = await asyncio.start_server(sink, sock=sock)
    try:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(sock=await connect(sender, address, port, 5))
        writer.write(os.urandom(size))
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 30) == b"done\n"
        elapsed = time.monotonic() - started
        writer.close()
        assert await received == size
        return elapsed
    finally:
        server.close()


def host_forwarding(lab: Lab, value: str) -> None:
    """Set the host namespace's forwarding (a new namespace copies the machine's)."""
    sh("ip", "netns", "exec", lab.name("host"), "sysctl", "-qw", f"net.ipv4.ip_forward={value}")


def route_lan_through_host(lab: Lab) -> None:
    """The LAN neighbour reaches the world through the host, if the host forwards."""
    sh("ip", "-n", lab.name("lan"), "route", "add", "default", "via", "192.168.77.2")
    sh("ip", "-n", lab.name("world"), "route", "add", "192.168.77.0/24", "via", HOST_UPLINK)


def nft_tables(lab: Lab) -> str:
    return sh("ip", "netns", "exec", lab.name("host"), "nft", "list", "tables")


def forwarding(lab: Lab, ifname: str) -> str:
    key = f"net/ipv4/conf/{ifname}/forwarding"
    return sh("ip", "netns", "exec", lab.name("host"), "cat", f"/proc/sys/{key}").strip()


def uplink_changes(before: str, after: str) -> list[SysctlChange]:
    return [SysctlChange(f"net/ipv4/conf/{name}/forwarding", before, after) for name in UPLINKS]


UPLINKS = ("lan0", "wan0")


async def test_forwarding_turned_on_by_the_agent_serves_containers_only(
    lab: Lab, node_settings: NetworkSettings
) -> None:
    machine_forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    host_forwarding(lab, "0")
    route_lan_through_host(lab)
    await lab.serve(lab.name("world"), WORLD, 80, "world")
    firewall = Firewall(node_settings)
    adapter = NetworkAdapter(node_settings)
    view = await adapter.host_view()
    assert view.uplinks == UPLINKS
    assert await firewall.install(view) == uplink_changes("0", "1")
    assert await firewall.install(view) == []
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == machine_forwarding
    assert (
        sh("ip", "netns", "exec", lab.name("host"), "sysctl", "-n", "net.ipv4.ip_forward") == "0\n"
    )
    assert f"table inet {node_settings.table}" in nft_tables(lab)
    node = Node(lab, lab.name("host"), node_settings, adapter, firewall)
    a = await node.container("a")
    assert forwarding(lab, a.allocation.ifname) == "1"
    route_back_from_world(lab, node)
    assert await probe(a.ns, WORLD, 80) == f"world {a.ip}"
    assert await unreachable({"lan via host": (lab.name("lan"), WORLD, 80, "")}) == {
        "lan via host": "timeout"  # the host did not route before, and still does not
    }

    assert await firewall.remove_all() == uplink_changes("1", "0")
    assert node_settings.table not in nft_tables(lab)
    assert await firewall.remove_all() == []


async def test_traffic_bridged_by_the_host_passes_the_forwarding_guard(
    lab: Lab, node_settings: NetworkSettings
) -> None:
    """Two neighbours on a bridge of the host (br_netfilter shows their frames to the forward
    hook) talk as before while the agent forwards for its containers, whether the bridge was
    there before the agent started or came later."""
    host_forwarding(lab, "0")
    host = lab.name("host")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "addr", "add", "10.77.0.1/24", "dev", "br0")
    sh("ip", "-n", host, "link", "set", "br0", "up")
    for role, address in (("p", "10.77.0.11"), ("q", "10.77.0.12")):
        ns = lab.netns(role)
        sh(
            "ip",
            "-n",
            host,
            "link",
            "add",
            f"br-{role}",
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            ns,
        )
        sh("ip", "-n", host, "link", "set", f"br-{role}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    await lab.serve(lab.name("q"), "10.77.0.12", 80, "q")
    adapter, firewall = NetworkAdapter(node_settings), Firewall(node_settings)
    view = await adapter.host_view()
    assert "br0" in view.uplinks
    await firewall.install(view)
    assert await probe(lab.name("p"), "10.77.0.12", 80) == "q 10.77.0.11"
    await firewall.install(replace(view, uplinks=UPLINKS))  # br0 came after the agent
    assert await probe(lab.name("p"), "10.77.0.12", 80) == "q 10.77.0.11"
    await firewall.remove_all()


async def test_a_host_that_already_forwards_keeps_forwarding(
    lab: Lab, node_settings: NetworkSettings
) -> None:
    host_forwarding(lab, "1")
    route_lan_through_host(lab)
    await lab.serve(lab.name("world"), WORLD, 80, "world")
    firewall = Firewall(node_settings)
    assert await firewall.install(HostView(uplinks=UPLINKS)) == []
    assert await probe(lab.name("lan"), WORLD, 80) == f"world {LAN}"
    assert await firewall.remove_all() == []
    assert await probe(lab.name("lan"), WORLD, 80) == f"world {LAN}"


async def test_an_older_agents_global_forwarding_is_turned_back_off(
    lab: Lab, node_settings: NetworkSettings
) -> None:
    """An agent from before per-interface forwarding turned ``ip_forward`` on and guarded it
    with one rule; the next agent turns the switch back off and forwards per interface."""
    host_forwarding(lab, "1")
    table = f"inet {node_settings.table}"
    legacy = (
        f"add table {table}\n"
        f"add chain {table} forward {{ type filter hook forward priority filter; }}\n"
        f'add rule {table} forward meta nfproto ipv4 iifname != "bth*" oifname != "bth*"'
        f' drop comment "{LEGACY_FORWARDING_GUARD}"\n'
    )
    subprocess.run(
        ["ip", "netns", "exec", lab.name("host"), "nft", "-f", "-"],
        input=legacy,
        text=True,
        check=True,
    )
    firewall = Firewall(node_settings)
    changes = await firewall.install(HostView(uplinks=UPLINKS))
    assert changes == [SysctlChange("net.ipv4.ip_forward", "1", "0"), *uplink_changes("0", "1")]
    assert (
        sh("ip", "netns", "exec", lab.name("host"), "sysctl", "-n", "net.ipv4.ip_forward") == "0\n"
    )
    assert await firewall.remove_all() == uplink_changes("1", "0")


async def test_two_agents_on_one_host_keep_separate_tables(lab: Lab, node: Node) -> None:
    other = node.restarted(
        firewall_id=f"u{lab.tag}",
        pool="10.254.0.0/16",  # agents sharing a host need their own pools
        interface_group=0xB151,
        state_file=node.settings.state_file + ".2",
    )
    await other.firewall.install()
    a, b = await node.container("a"), await other.container("b")
    port = node.settings.provider_port
    await lab.serve(node.host, a.host_ip, port, "provider-a")
    await lab.serve(node.host, b.host_ip, port, "provider-b")
    assert [i.container_id for i in await node.adapter.list()] == [a.cid]
    assert [i.container_id for i in await other.adapter.list()] == [b.cid]

    await other.firewall.remove_all()
    assert await probe(a.ns, node.settings.metadata_address, port) == f"provider-a {a.ip}"
    assert await unreachable({"b's provider": (a.ns, b.host_ip, port, "")}) == {
        "b's provider": "timeout"
    }
