"""Pure pieces of bismuth_lab: address plan, rendered files, lab.json, mount tables, the
firewall decision, the CLI's options, and the groups of ``inventories/lab.py``."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from bismuth_lab import state
from bismuth_lab.__main__ import build_parser
from bismuth_lab.firewall import rule_needed
from bismuth_lab.mounts import mount_points_under, parse_mountinfo
from bismuth_lab.plan import (
    HostPlan,
    LabPlan,
    PlanError,
    render_etc_hosts,
    render_sshd_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_default_plan_numbers_hosts_from_dot_eleven() -> None:
    plan = LabPlan()
    assert (plan.subnet, plan.bridge, plan.prefix, plan.gateway) == (
        "10.250.0.0/24",
        "bislab0",
        "lab",
        "10.250.0.1",
    )
    assert plan.hosts(3) == [
        HostPlan(1, "lab1", "10.250.0.11", "bislab0-1"),
        HostPlan(2, "lab2", "10.250.0.12", "bislab0-2"),
        HostPlan(3, "lab3", "10.250.0.13", "bislab0-3"),
    ]


@pytest.mark.parametrize(
    ("subnet", "n", "last"),
    [("10.250.0.0/24", 244, "10.250.0.254"), ("192.168.7.16/28", 4, "192.168.7.30")],
)
def test_the_last_host_sits_below_the_broadcast_address(subnet: str, n: int, last: str) -> None:
    plan = LabPlan(subnet=subnet)
    assert plan.max_hosts == n
    assert plan.hosts(n)[-1].address == last
    with pytest.raises(PlanError, match=f"must be 1 to {n}"):
        plan.hosts(n + 1)


def test_zero_hosts_is_refused() -> None:
    with pytest.raises(PlanError, match="host count 0"):
        LabPlan().hosts(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subnet": "10.250.0.5/24"}, "host bits set"),
        ({"subnet": "not-a-subnet"}, "does not appear to be"),
        ({"subnet": "fd00::/64"}, "IPv4"),
        ({"subnet": "10.250.0.0/29"}, "/28 or larger"),
        ({"bridge": "a-very-long-br"}, "at most 11 characters"),
        ({"bridge": "br 0"}, "bridge 'br 0'"),
        ({"prefix": "Lab"}, "lowercase"),
        ({"prefix": "1lab"}, "starting with a letter"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        LabPlan(**kwargs)


def test_sshd_config_listens_on_the_host_only_and_takes_the_lab_key_only() -> None:
    host = HostPlan(2, "lab2", "10.250.0.12", "bislab0-2")
    text = render_sshd_config(host, Path("/s/hosts/lab2/key"), Path("/s/authorized_keys"))
    lines = set(text.splitlines())
    for line in (
        "ListenAddress 10.250.0.12:22",
        "HostKey /s/hosts/lab2/key",
        "AuthorizedKeysFile /s/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "UsePAM no",
        "PidFile none",
        "StrictModes no",
    ):
        assert line in lines


def test_etc_hosts_names_every_lab_host() -> None:
    text = render_etc_hosts(LabPlan(prefix="x").hosts(2))
    assert text.splitlines() == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.250.0.11\tx1",
        "10.250.0.12\tx2",
    ]


def test_lab_json_round_trips(tmp_path: Path) -> None:
    lab = state.LabState(
        state_dir=str(tmp_path),
        subnet="10.250.0.0/24",
        bridge="bislab0",
        prefix="lab",
        key="k",
        known_hosts="kh",
        hosts=(state.HostState("lab1", "10.250.0.11", "lab1", "bislab0-1", 10, 20, 30, 9),),
        created_dirs=("/opt/bismuth",),
        complete=True,
    )
    state.save(lab)
    assert state.load(tmp_path) == lab
    assert state.load(tmp_path / "missing") is None


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /tmp rw shared:5 - tmpfs tmpfs rw
31 30 0:41 / /tmp/with\\040space rw - tmpfs tmpfs rw
32 31 8:1 /x /tmp/with\\040space/inner rw - ext4 /dev/vda rw
33 22 0:4 net:[4026532300] /run/netns/lab1 rw - nsfs nsfs rw
"""


def test_mountinfo_is_parsed_with_escapes_and_unmounted_deepest_first() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts][2] == "/tmp/with space"
    assert mounts[4].fstype == "nsfs"
    assert mount_points_under("/tmp", mounts) == [
        "/tmp/with space/inner",
        "/tmp/with space",
        "/tmp",
    ]
    assert mount_points_under("/tm", mounts) == []


@pytest.mark.parametrize(
    ("calls", "rules", "needed"),
    [
        (True, "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n", True),
        (True, "-P FORWARD ACCEPT\n", False),
        (False, "-P FORWARD DROP\n", False),
        (True, "", False),
    ],
)
def test_forward_rule_only_when_bridged_traffic_meets_a_dropping_policy(
    calls: bool, rules: str, needed: bool
) -> None:
    assert rule_needed(calls, rules) is needed


@pytest.mark.parametrize(
    "argv",
    [
        ["--state", "/s", "--prefix", "p", "up", "2"],
        ["up", "2", "--state", "/s", "--prefix", "p"],
        ["--state", "/x", "up", "--state", "/s", "2", "--prefix", "p"],
    ],
)
def test_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.command, args.n, args.state, args.prefix, args.subnet) == (
        "up",
        2,
        "/s",
        "p",
        None,
    )


def test_ssh_passes_the_remote_command_through() -> None:
    args = build_parser().parse_args(["ssh", "lab2", "ls", "-l", "/etc"])
    assert (args.name, args.remote) == ("lab2", ["ls", "-l", "/etc"])


def _write_lab(state_dir: Path, n: int, complete: bool = True) -> None:
    plan = LabPlan()
    hosts = tuple(state.HostState(h.name, h.address, h.name, h.veth) for h in plan.hosts(n))
    state_dir.mkdir()
    state.save(
        state.LabState(
            str(state_dir), plan.subnet, plan.bridge, plan.prefix, "/k", "/kh", hosts,
            complete=complete,
        )
    )  # fmt: skip


@pytest.mark.parametrize(("n", "zookeeper"), [(1, ["lab1"]), (5, ["lab1", "lab2", "lab3"])])
def test_inventory_groups_and_host_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, zookeeper: list[str]
) -> None:
    _write_lab(tmp_path / "lab", n)
    monkeypatch.setenv("BISMUTH_LAB_STATE", str(tmp_path / "lab"))
    inventory = runpy.run_path(str(REPO / "inventories" / "lab.py"))
    assert [name for name, _ in inventory["zookeeper"]] == zookeeper
    assert [name for name, _ in inventory["agents"]] == [f"lab{i}" for i in range(1, n + 1)]
    assert [name for name, _ in inventory["frontends"]] == ["lab1"]
    assert [name for name, _ in inventory["api"]] == ["lab1"]
    assert inventory["agents"][-1][1] == {
        "ssh_hostname": f"10.250.0.{10 + n}",
        "ssh_user": "root",
        "ssh_key": "/k",
        "ssh_known_hosts_file": "/kh",
        "node_ip": f"10.250.0.{10 + n}",
    }


@pytest.mark.parametrize("made", [False, True])
def test_inventory_without_a_complete_lab_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: bool
) -> None:
    if made:
        _write_lab(tmp_path / "lab", 2, complete=False)  # up failed half-way, or still runs
    monkeypatch.setenv("BISMUTH_LAB_STATE", str(tmp_path / "lab"))
    with pytest.raises(RuntimeError, match="python -m bismuth_lab up N"):
        runpy.run_path(str(REPO / "inventories" / "lab.py"))
