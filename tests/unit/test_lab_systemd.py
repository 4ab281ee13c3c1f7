"""What a systemd lab host is made of, computed without touching the machine."""

from __future__ import annotations

import runpy
from pathlib import Path

from bismuth_lab import systemd

REPO = Path(__file__).resolve().parents[2]


def test_the_root_holds_every_package_an_agent_host_needs() -> None:
    settings = runpy.run_path(str(REPO / "group_data" / "all.py"))
    needed = {*settings["debian_packages"], *settings["agent_packages"]}
    assert needed <= set(systemd.ROOTFS_PACKAGES)  # the deploy's apt steps change nothing
    assert {"systemd", "systemd-sysv", "openssh-server"} <= set(systemd.ROOTFS_PACKAGES)


def test_the_cache_key_follows_suite_and_packages_not_their_order() -> None:
    key = systemd.rootfs_key(["a", "b"], "bookworm")
    assert key == systemd.rootfs_key(["b", "a"], "bookworm")
    assert key != systemd.rootfs_key(["a", "b", "c"], "bookworm")
    assert key != systemd.rootfs_key(["a", "b"], "trixie")
    assert key.startswith("systemd-bookworm-")


def test_mmdebstrap_builds_from_the_given_sources_without_docs() -> None:
    argv = systemd.mmdebstrap_argv(
        Path("/c/root"), "bookworm", ["deb http://m/debian bookworm main"]
    )
    assert argv[:2] == ["mmdebstrap", "--variant=minbase"]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert argv[-3:] == ["bookworm", "/c/root", "deb http://m/debian bookworm main"]


def test_the_host_enters_its_own_cgroups_then_becomes_nspawn() -> None:
    argv = systemd.spawn_argv("lab2", Path("/s/hosts/lab2"), "/run/netns/lab2")
    assert argv[:2] == ["sh", "-c"]
    for tree in ("systemd", "unified"):
        if (systemd.CGROUP_ROOT / tree).is_dir():
            assert f"/sys/fs/cgroup/{tree}/lab-lab2/cgroup.procs" in argv[2]
    nspawn = argv[argv.index("systemd-nspawn") :]
    assert "--boot" in nspawn and "--register=no" in nspawn
    assert "--network-namespace-path=/run/netns/lab2" in nspawn
    assert "--bind=/sys/fs/cgroup/memory:/run/host-cgroup/memory" in nspawn
    assert "--directory=/s/hosts/lab2/rootfs" in nspawn
    assert "--bind=/s/hosts/lab2/containerd:/var/lib/containerd" in nspawn  # not on the overlay


def test_every_v1_hierarchy_the_machine_mounts_is_bound_into_the_host() -> None:
    mounts = (
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        "cgroup /sys/fs/cgroup/hugetlb cgroup rw,hugetlb 0 0\n"
        "cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,net_cls,net_prio 0 0\n"
        "cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup /elsewhere/memory cgroup rw,memory 0 0\n"
    )
    assert systemd.v1_controllers(mounts) == ["cpu", "hugetlb", "net_cls,net_prio"]
