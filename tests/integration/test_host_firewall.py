"""The deploy's host firewall, loaded by real nftables into a network namespace of the test's.

A "host" namespace runs the ruleset the deploy renders and listens on a daemon port and on
another port; two "machines" reach it over a bridge of their own: one in the fleet, one
outside. Only the daemon port is guarded, and only against the outsider.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.host_firewall import ruleset

pytestmark = pytest.mark.integration

SUBNET = "10.249.{}.{}"
DAEMON_PORT, OTHER_PORT = 2181, 8000


def sh(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Net:
    tag: str
    third: int

    def ns(self, role: str) -> str:
        return f"hf{self.tag}{role}"

    def address(self, last: int) -> str:
        return SUBNET.format(self.third, last)


@pytest.fixture
def net() -> Iterator[Net]:
    """host (.1), member (.2) and outsider (.3) namespaces on a bridge in a namespace."""
    tag = uuid.uuid4().hex[:6]
    third = int(tag[:2], 16)
    net = Net(tag, third)
    roles = {"host": 1, "member": 2, "outsider": 3}
    bridge_ns = net.ns("br")
    try:
        sh("ip", "netns", "add", bridge_ns)
        sh("ip", "-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", bridge_ns, "link", "set", "br0", "up")
        for role, last in roles.items():
            ns = net.ns(role)
            sh("ip", "netns", "add", ns)
            sh(
                "ip",
                "-n",
                bridge_ns,
                "link",
                "add",
                role,
                "type",
                "veth",
                "peer",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", bridge_ns, "link", "set", role, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{net.address(last)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield net
    finally:
        for role in (*roles, "br"):
            sh("ip", "netns", "del", net.ns(role), check=False)


@contextlib.contextmanager
def listening(netns: str, port: int) -> Iterator[None]:
    """A TCP listener on every address of ``netns``."""
    script = (
        "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        f"s.bind(('0.0.0.0',{port}));s.listen();print('up',flush=True)\n"
        "while True:\n c,_=s.accept();c.close()"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-c", script], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        yield
    finally:
        proc.kill()
        proc.wait()


def connects(netns: str, address: str, port: int) -> bool:
    probe = (
        "import socket,sys\n"
        f"try: socket.create_connection(('{address}',{port}),timeout=1.5).close()\n"
        "except OSError: sys.exit(1)"
    )
    return sh("python3", "-c", probe, netns=netns, check=False).returncode == 0


def load(net: Net, tmp_path: Path, fleet: list[str]) -> str:
    table = f"bismuth_host_t{net.tag}"
    text, comment = ruleset(table, fleet, [DAEMON_PORT, 8001, 8002])
    path = tmp_path / "host-firewall.nft"
    path.write_text(text)
    for _ in range(2):  # loading it again replaces it (as a deploy after a change does)
        sh("nft", "-f", str(path), netns=net.ns("host"))
    listed = sh("nft", "list", "table", "inet", table, netns=net.ns("host")).stdout
    assert f'comment "{comment}"' in listed
    return table


def test_daemon_ports_admit_only_the_fleet_and_loopback(net: Net, tmp_path: Path) -> None:
    host = net.address(1)
    load(net, tmp_path, [host, net.address(2), "192.0.2.0/24"])
    with listening(net.ns("host"), DAEMON_PORT), listening(net.ns("host"), OTHER_PORT):
        assert connects(net.ns("member"), host, DAEMON_PORT)
        assert connects(net.ns("host"), "127.0.0.1", DAEMON_PORT)
        assert connects(net.ns("host"), host, DAEMON_PORT)  # its own address: via loopback
        assert not connects(net.ns("outsider"), host, DAEMON_PORT)
        # every other port is left alone: the outsider reaches it
        assert connects(net.ns("outsider"), host, OTHER_PORT)
        assert connects(net.ns("member"), host, OTHER_PORT)


def test_a_host_added_to_the_fleet_is_admitted_after_the_next_load(
    net: Net, tmp_path: Path
) -> None:
    host = net.address(1)
    load(net, tmp_path, [host])
    with listening(net.ns("host"), DAEMON_PORT):
        assert not connects(net.ns("member"), host, DAEMON_PORT)
        load(net, tmp_path, [host, net.address(2)])
        assert connects(net.ns("member"), host, DAEMON_PORT)
        assert not connects(net.ns("outsider"), host, DAEMON_PORT)


def test_the_hosts_own_connections_from_a_guarded_port_number_are_untouched(
    net: Net, tmp_path: Path
) -> None:
    """Replies to this host's own connections are not new connections: never dropped, even
    when their port number is a daemon's (as an ephemeral port can be)."""
    load(net, tmp_path, [net.address(1)])
    outsider = net.address(3)
    probe = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {DAEMON_PORT})); s.settimeout(3)\n"
        f"s.connect(('{outsider}', {OTHER_PORT})); s.close()"
    )
    with listening(net.ns("outsider"), OTHER_PORT):
        done = sh("python3", "-c", probe, netns=net.ns("host"), check=False)
    assert done.returncode == 0, done.stderr
