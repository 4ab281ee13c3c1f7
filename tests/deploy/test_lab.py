"""Lab hosts for real: ``bismuth_lab`` brings up network namespaces with sshd, the lab's
pyinfra inventory reaches them, and ``down`` leaves nothing behind.

Needs root. Every lab here has its own state dir (under /tmp, which lab hosts overmount
with a tmpfs of their own), a random free subnet 10.251.x.0/24, and its own bridge and
host-name prefix, so an operator's lab (``bislab0``, ``lab1``...) is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bismuth_lab import Lab, LabError, hostfiles, procs
from bismuth_lab.mounts import mounts_of
from bismuth_lab.plan import HostPlan
from tests.deploy.fleet import free_subnet

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.prefix) / "bin" / "pyinfra"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def new_lab(root: Path) -> Lab:
    tag = uuid.uuid4().hex[:6]
    return Lab(root / "state", free_subnet(), f"blt{tag}", f"t{tag}h")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("lab"))
    try:
        lab.up(3)
        yield lab
    finally:
        lab.down()


def ssh_ok(lab: Lab, host: str, script: str) -> str:
    done = lab.ssh(host, ["sh", "-c", script], timeout=30)
    assert done.returncode == 0, f"{host}: {script!r}: {done.stderr}"
    return done.stdout


def test_each_host_has_its_own_hostname_hosts_file_and_empty_resolv_conf(lab: Lab) -> None:
    hosts = lab.hosts()
    assert [h.name for h in hosts] == [f"{lab.plan.prefix}{i}" for i in (1, 2, 3)]
    for h in hosts:
        out = ssh_ok(
            lab, h.name, "hostname; cat /etc/hostname; wc -c </etc/resolv.conf; cat /etc/hosts"
        )
        assert out.split()[:3] == [h.name, h.name, "0"]
        for other in hosts:
            assert f"{other.address}\t{other.name}\n" in out


PRIVATE = ("/etc/bismuth", "/var/lib/bismuth", "/var/lib/containerd", "/run/containerd", "/tmp")


def test_private_directories_are_private_to_each_host(lab: Lab) -> None:
    first, second = lab.hosts()[:2]
    files = [f"{d}/lab-test-{uuid.uuid4().hex}" for d in PRIVATE]
    ssh_ok(lab, first.name, "; ".join(f"echo hello > {f}" for f in files))
    assert ssh_ok(lab, first.name, f"cat {' '.join(files)}") == "hello\n" * len(files)
    seen = ssh_ok(lab, second.name, "; ".join(f"test -e {f} && echo {f}" for f in files) + "; :")
    assert seen == "", f"visible on {second.name}: {seen}"
    assert not [f for f in files if Path(f).exists()], "visible on the machine"


def test_each_host_has_its_own_pid_namespace(lab: Lab) -> None:
    for h in lab.hosts():
        out = ssh_ok(lab, h.name, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc")
        init, listing = out.split("\n", 1)
        assert "bismuth_lab.init" in init
        pids = [p for p in listing.split() if p.isdigit()]
        machine = [p for p in os.listdir("/proc") if p.isdigit()]
        assert len(pids) < 20 < len(machine), f"{h.name} sees {len(pids)} processes"


def test_hosts_reach_each_other_over_the_bridge(lab: Lab) -> None:
    first, second = lab.hosts()[:2]
    probe = (
        "import socket; "
        f"s = socket.create_connection(('{second.address}', 22), timeout=5); "
        "print(s.recv(7).decode())"
    )
    assert ssh_ok(lab, first.name, f'python3 -c "{probe}"') == "SSH-2.0\n"


def test_hosts_have_no_default_route(lab: Lab) -> None:
    for h in lab.hosts():
        default, routes = ssh_ok(lab, h.name, "ip route show default; echo -; ip -4 route").split(
            "-\n"
        )
        assert default == ""
        assert [r.split()[0] for r in routes.splitlines()] == [lab.plan.subnet]


def test_pyinfra_reaches_every_host_with_the_lab_inventory(lab: Lab) -> None:
    env = {**os.environ, "BISMUTH_LAB_STATE": str(lab.state_dir)}
    done = subprocess.run(
        [str(PYINFRA), "-y", "inventories/lab.py", "exec", "--", "hostname"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr  # pyinfra reports on stderr
    assert done.returncode == 0, output
    for h in lab.hosts():
        assert f"[{h.name}] {h.name}" in output


def test_up_again_is_a_no_op(lab: Lab) -> None:
    record = (lab.state_dir / "lab.json").read_text()
    again = Lab(lab.state_dir)  # settings come from the recorded lab
    assert again.up(3) == lab.state()
    assert (lab.state_dir / "lab.json").read_text() == record
    assert all(s.ok for s in again.status())
    with pytest.raises(LabError, match=r"has 3 hosts \(0 booting systemd\), not 2 \(0\)"):
        again.up(2)
    with pytest.raises(LabError, match=r"has 3 hosts \(0 booting systemd\), not 3 \(1\)"):
        again.up(3, systemd_hosts=1)


def cgroup_top() -> Path:
    """A cgroup hierarchy a lab host can make cgroups in: v1 pids, else the v2 tree."""
    for top in (CGROUP_ROOT / "pids", CGROUP_ROOT / "unified", CGROUP_ROOT):
        if (top / "cgroup.procs").exists():
            return top
    raise AssertionError("no cgroup hierarchy found")


def test_down_leaves_nothing_behind(tmp_path: Path) -> None:
    lab = new_lab(tmp_path)
    try:
        lab.up(2)
        first = lab.hosts()[0]
        cgroup = cgroup_top() / f"bismuth-{first.address}" / "c1"
        ssh_ok(
            lab,
            first.name,
            "setsid sleep 1000 </dev/null >/dev/null 2>&1 & "
            "unshare --pid --fork --mount-proc sleep 1000 </dev/null >/dev/null 2>&1 & "
            f"mkdir -p {cgroup}; sleep 1000 </dev/null >/dev/null 2>&1 & "
            f"echo $! > {cgroup}/cgroup.procs",
        )
        assert (cgroup / "cgroup.procs").read_text().strip(), "nothing runs in the host's cgroup"
        netns = {h.netns: f"/run/netns/{h.netns}" for h in lab.hosts()}
        pids = [p for found in procs.netns_pids(netns).values() for p in found]
        started = [(p, procs.start_time(p)) for p in pids]
        assert len(started) >= 2 * 3 + 3  # unshare, init, sshd per host; the 3 sleeps

        assert lab.down() is True

        assert not [p for p, t in started if procs.running(p, t)]
        namespaces = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        )
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
        assert lab.hosts() == []
        for name in netns:
            assert name not in namespaces.stdout.split()
        assert lab.plan.bridge not in links.stdout  # the bridge and its <bridge>-N veths
        assert not [m for m in mounts_of() if str(lab.state_dir) in m.mount_point]
        assert not lab.state_dir.exists()
        assert not list(CGROUP_ROOT.glob(f"*/bismuth-{first.address}"))
        assert not (CGROUP_ROOT / f"bismuth-{first.address}").exists()
        assert lab.down() is False  # nothing left: still fine
    finally:
        lab.down()


def test_a_host_that_cannot_start_fails_up_naming_it_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_host = hostfiles.write_host

    def without_sshd(state_dir: Path, hosts: list[HostPlan], host: HostPlan) -> str:
        line = write_host(state_dir, hosts, host)
        if host.index == 2:  # this host's init finds no sshd to start
            init = state_dir / "hosts" / host.name / "init.json"
            config = json.loads(init.read_text())
            init.write_text(json.dumps({**config, "sshd": ["/nonexistent/sshd"]}))
        return line

    monkeypatch.setattr(hostfiles, "write_host", without_sshd)
    lab = new_lab(tmp_path)
    try:
        with pytest.raises(LabError, match=rf"{lab.plan.prefix}2 failed: .*/nonexistent/sshd"):
            lab.up(2)
        assert not lab.state_dir.exists()
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
        assert lab.plan.bridge not in links.stdout
        assert not Path(f"/run/netns/{lab.plan.prefix}1").exists()
    finally:
        lab.down()


def test_a_systemd_host_boots_systemd_and_down_leaves_nothing_behind(tmp_path: Path) -> None:
    """A host booting systemd (its own root, systemd-nspawn): sshd up once it booted,
    containers possible under the machine's cgroups, and after down no process, mount,
    namespace or cgroup of it is left."""
    lab = new_lab(tmp_path)
    try:
        lab.up(1, systemd_hosts=1)
        (host,) = lab.hosts()
        assert host.kind == "systemd"
        out = ssh_ok(lab, host.name, "cat /proc/1/comm; hostname; systemctl is-system-running")
        assert out.split() == ["systemd", host.name, "running"]
        memory = ssh_ok(lab, host.name, "stat -f -c %T /sys/fs/cgroup/memory; touch /x; echo ok")
        assert memory.split() == ["cgroupfs", "ok"]  # the machine's controller, writable
        assert not Path("/x").exists()  # its root is its own
        own = list(CGROUP_ROOT.glob(f"*/lab-{host.name}"))
        assert own, "the host runs in no cgroup of its own"
        launcher, init = host.unshare_pid, host.init_pid
        assert procs.comm(launcher) == "systemd-nspawn"

        assert lab.down() is True

        assert not procs.running(init, host.init_start)
        assert procs.comm(launcher) != "systemd-nspawn"
        assert not [m for m in mounts_of() if str(lab.state_dir) in m.mount_point]
        assert not list(CGROUP_ROOT.glob(f"*/lab-{host.name}"))
        assert not Path(f"/run/netns/{host.netns}").exists()
    finally:
        lab.down()
