"""A lab: N hosts on this machine that pyinfra reaches over SSH, and their teardown.

Each lab host is a network namespace ``<prefix>N`` (veth ``eth0`` on the lab's bridge,
address ``.10+N``, loopback up, no default route) with its own mount, UTS and PID
namespaces, whose init (:mod:`bismuth_lab.init`) mounts the host's private directories and
runs sshd. The mount, UTS and PID namespaces live exactly as long as that init
(``nsenter -t <init pid> -a`` enters a host); only the network namespace is also kept as a
file, ``/run/netns/<name>``, so the machine's mount table gains nothing else. ``down`` kills
each init, which ends everything the host ran, then removes the links, namespaces, cgroups,
mount points and state dir. Labs with different state dirs, subnets, bridges and prefixes
coexist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bismuth_lab import cgroups, firewall, hostfiles, network, procs, ssh, state, systemd
from bismuth_lab.mounts import Mounter, mount_points_under, mounts_of
from bismuth_lab.plan import DEFAULT_BRIDGE, DEFAULT_PREFIX, DEFAULT_SUBNET, LabPlan, PlanError
from bismuth_lab.state import HostState, LabState

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(RuntimeError):
    """The lab cannot be brought up or torn down; the message says why and what to do."""


@dataclass(frozen=True)
class HostStatus:
    """One host as seen now: whether its init and its sshd still run."""

    host: HostState
    init_running: bool
    sshd_running: bool

    @property
    def ok(self) -> bool:
        return self.init_running and self.sshd_running


class Lab:
    """One lab, recorded in ``state_dir``.

    ``subnet``, ``bridge`` and ``prefix`` default to those of the lab already recorded
    there, else to 10.250.0.0/24, ``bislab0`` and ``lab``.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        subnet: str | None = None,
        bridge: str | None = None,
        prefix: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir or state.default_state_dir()).absolute()
        if any(c.isspace() for c in str(self.state_dir)):
            raise LabError(f"state dir {self.state_dir}: no whitespace allowed in its path")
        recorded = self.state()
        try:
            self.plan = LabPlan(
                subnet or (recorded.subnet if recorded else DEFAULT_SUBNET),
                bridge or (recorded.bridge if recorded else DEFAULT_BRIDGE),
                prefix or (recorded.prefix if recorded else DEFAULT_PREFIX),
            )
        except PlanError as exc:
            raise LabError(str(exc)) from None
        self._spawned: dict[str, subprocess.Popen[bytes]] = {}

    # -- reading -------------------------------------------------------------------------

    def state(self) -> LabState | None:
        return state.load(self.state_dir)

    def hosts(self) -> list[HostState]:
        recorded = self.state()
        return list(recorded.hosts) if recorded else []

    def status(self) -> list[HostStatus]:
        return [
            HostStatus(h, procs.running(h.init_pid, h.init_start), procs.running(h.sshd_pid))
            for h in self.hosts()
        ]

    def host(self, name: str) -> HostState:
        recorded = self.state()
        if recorded is None:
            raise LabError(f"no lab at {self.state_dir}")
        try:
            return recorded.host(name)
        except KeyError as exc:
            raise LabError(str(exc.args[0])) from None

    def ssh_argv(self, host: str | HostState, remote: Sequence[str] = ()) -> list[str]:
        """The ssh command line for ``host`` (``remote`` words joined by ssh, as ssh does)."""
        target = self.host(host) if isinstance(host, str) else host
        keys = self.state_dir
        return ssh.ssh_argv(
            str(hostfiles.client_key(keys)),
            str(hostfiles.known_hosts(keys)),
            target.address,
            remote,
        )

    def ssh(
        self,
        host: str | HostState,
        argv: Sequence[str],
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` over SSH as root (each word arrives as given)."""
        target = self.host(host) if isinstance(host, str) else host
        key, known = hostfiles.client_key(self.state_dir), hostfiles.known_hosts(self.state_dir)
        return ssh.run(str(key), str(known), target.address, argv, timeout, input)

    # -- up --------------------------------------------------------------------------------

    def up(self, n: int, timeout: float | None = None, systemd_hosts: int = 0) -> LabState:
        """Bring up ``n`` hosts, the last ``systemd_hosts`` of them booting systemd (see
        :mod:`bismuth_lab.systemd`); a no-op when this lab already runs just that."""
        if not 0 <= systemd_hosts <= n:
            raise LabError(f"systemd hosts: {systemd_hosts} of {n} hosts is not possible")
        timeout = timeout or (120.0 if systemd_hosts else 30.0)
        recorded = self.state()
        if recorded is not None:
            return self._existing(recorded, n, systemd_hosts)
        try:
            plans = self.plan.hosts(n)
            network.check_free(self.plan, plans)
        except (PlanError, network.NetworkError) as exc:
            raise LabError(str(exc)) from None
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            raise LabError(f"state dir {self.state_dir} is not empty and holds no lab.json")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = self.state_dir
        lab = LabState(
            state_dir=str(self.state_dir),
            subnet=self.plan.subnet,
            bridge=self.plan.bridge,
            prefix=self.plan.prefix,
            key=str(hostfiles.client_key(keys)),
            known_hosts=str(hostfiles.known_hosts(keys)),
            hosts=tuple(
                HostState(h.name, h.address, h.name, h.veth, kind=_kind(h.index, n, systemd_hosts))
                for h in plans
            ),
        )
        state.save(lab)  # first: from here on, down can undo whatever follows
        try:
            return self._build(lab, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise

    def _existing(self, lab: LabState, n: int, systemd_hosts: int) -> LabState:
        where = f"the lab at {self.state_dir}"
        if not lab.complete:
            raise LabError(f"{where} is half made (up failed or still runs): run down first")
        if (lab.subnet, lab.bridge, lab.prefix) != (
            self.plan.subnet,
            self.plan.bridge,
            self.plan.prefix,
        ):
            raise LabError(
                f"{where} was made with --subnet {lab.subnet} --bridge {lab.bridge}"
                f" --prefix {lab.prefix}: run down first"
            )
        booting = sum(h.kind == "systemd" for h in lab.hosts)
        if (len(lab.hosts), booting) != (n, systemd_hosts):
            raise LabError(
                f"{where} has {len(lab.hosts)} hosts ({booting} booting systemd), not {n}"
                f" ({systemd_hosts}): run down first"
            )
        broken = [s.host.name for s in self.status() if not s.ok]
        if broken:
            raise LabError(f"{where}: not running: {', '.join(broken)}; run down, then up")
        return lab

    def _build(self, lab: LabState, timeout: float) -> LabState:
        deadline = time.monotonic() + timeout
        lab = replace(lab, created_dirs=tuple(hostfiles.make_mount_points()))
        state.save(lab)
        plans = self.plan.hosts(len(lab.hosts))
        hostfiles.write_client_key(self.state_dir)
        lines = [hostfiles.write_host(self.state_dir, plans, h) for h in plans]
        Path(lab.known_hosts).write_text("\n".join(lines) + "\n")
        lower = None
        if any(h.kind == "systemd" for h in lab.hosts):
            try:
                lower = systemd.ensure_rootfs()
            except systemd.RootfsError as exc:
                raise LabError(str(exc)) from None
        network.create(self.plan, plans)
        lab = replace(lab, forward_rule=firewall.open_bridge(self.plan.bridge))
        state.save(lab)
        for host in lab.hosts:
            if host.kind == "systemd":
                assert lower is not None
                self._spawned[host.name] = self._boot(host, lower)
            else:
                self._spawned[host.name] = self._spawn(host)
        for host in lab.hosts:
            lab = lab.with_host(self._await(host, self._spawned[host.name], deadline))
            state.save(lab)
        lab = replace(lab, complete=True)
        state.save(lab)
        return lab

    def _spawn(self, host: HostState) -> subprocess.Popen[bytes]:
        hdir = self.state_dir / "hosts" / host.name
        argv = [
            "nsenter", f"--net={network.NETNS_DIR / host.netns}",
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
            "--propagation", "private", "--kill-child",
            sys.executable, "-m", "bismuth_lab.init", str(hdir / "init.json"),
        ]  # fmt: skip
        env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "PYTHONPATH": str(PACKAGE_ROOT)}
        with open(hdir / "init.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                env=env,
                start_new_session=True,
            )

    def _boot(self, host: HostState, lower: Path) -> subprocess.Popen[bytes]:
        """A systemd host: its root on an overlay of ``lower``, booted by systemd-nspawn."""
        hdir = self.state_dir / "hosts" / host.name
        root = systemd.mount_root(lower, hdir)
        systemd.install_host_files(root, hdir, host.name, self.state_dir / "authorized_keys")
        systemd.make_cgroups(host.name)
        argv = systemd.spawn_argv(host.name, hdir, str(network.NETNS_DIR / host.netns))
        with open(hdir / "init.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                env={"PATH": HOST_PATH, "LANG": "C.UTF-8", **systemd.SPAWN_ENV},
                start_new_session=True,
            )

    def _await(self, host: HostState, proc: subprocess.Popen[bytes], deadline: float) -> HostState:
        """Wait until the host's init runs and its sshd accepts connections; note their PIDs."""
        log = self.state_dir / "hosts" / host.name / "init.log"

        def alive() -> None:
            if proc.poll() is not None:
                raise LabError(f"lab host {host.name} failed: {log.read_text().strip()}")

        def init_pids() -> list[int]:
            alive()
            children = procs.children(proc.pid)
            if host.kind == "systemd":  # nspawn forks short-lived helpers before the init
                return [c for c in children if procs.comm(c) == "systemd"]
            return children

        def listening() -> bool:
            alive()
            return _accepts(host.address, 22)

        left = lambda: max(deadline - time.monotonic(), 0.0)  # noqa: E731
        try:
            init_pid = procs.wait_for(init_pids, left(), "init")[0]
            procs.wait_for(listening, left(), "sshd to listen")
            sshd = procs.wait_for(
                lambda: [c for c in procs.children(init_pid) if procs.comm(c) == "sshd"],
                left(),
                "sshd's PID",
            )
        except procs.Timeout as exc:
            raise LabError(f"lab host {host.name}: {exc}; see {log}") from None
        return replace(
            host,
            init_pid=init_pid,
            init_start=procs.start_time(init_pid),
            sshd_pid=sshd[0],
            unshare_pid=proc.pid,
        )

    # -- down ------------------------------------------------------------------------------

    def down(self, timeout: float = 15.0) -> bool:
        """Remove the lab and everything it ran; False when there was none to remove."""
        lab = self.state()
        if lab is None:
            return False
        self._stop_hosts(lab, timeout)
        mounter = Mounter()
        for point in mount_points_under(str(self.state_dir), mounts_of()):
            mounter.detach(point)
        try:
            network.remove(lab.bridge, [(h.netns, h.veth) for h in lab.hosts])
        except network.NetworkError as exc:
            raise LabError(str(exc)) from None
        firewall.close_bridge(lab.bridge)
        addresses = [h.address for h in lab.hosts]
        booted = [h.name for h in lab.hosts if h.kind == "systemd"]

        def busy_cgroups() -> list[str]:
            return cgroups.remove_lab_cgroups(addresses) + cgroups.remove_host_cgroups(booted)

        try:
            procs.wait_for(lambda: not busy_cgroups(), timeout, "cgroups to empty")
        except procs.Timeout:
            raise LabError(f"cgroups still busy: {'; '.join(busy_cgroups())}") from None
        hostfiles.remove_mount_points(list(lab.created_dirs))
        shutil.rmtree(self.state_dir)
        return True

    def _stop_hosts(self, lab: LabState, timeout: float) -> None:
        """SIGKILL each host's init (its PID namespace ends with it), then whatever else
        still sits in a lab netns; wait until all of it is gone.
        """
        for h in lab.hosts:
            if procs.running(h.init_pid, h.init_start):
                procs.kill(h.init_pid)
            elif _launcher(h.unshare_pid):  # init unknown: ending its launcher ends it too
                procs.kill(h.unshare_pid)
        for name, proc in self._spawned.items():
            if not procs.running(lab.host(name).init_pid):
                proc.kill()
        netns = {h.netns: str(network.NETNS_DIR / h.netns) for h in lab.hosts}

        def gone() -> bool:
            for proc in self._spawned.values():
                proc.poll()
            left = [p for pids in procs.netns_pids(netns).values() for p in pids]
            left += [h.unshare_pid for h in lab.hosts if _launcher(h.unshare_pid)]
            inits = [h for h in lab.hosts if procs.running(h.init_pid, h.init_start)]
            if not inits:  # what is left entered a lab netns from outside a host's init
                for pid in left:
                    procs.kill(pid, signal.SIGKILL)
            return not left and not inits

        try:
            procs.wait_for(gone, timeout, "lab host processes to exit")
        except procs.Timeout as exc:
            raise LabError(str(exc)) from None
        self._spawned.clear()


def _launcher(pid: int) -> bool:
    """Whether ``pid`` still is what started a host's init (unshare, or systemd-nspawn)."""
    return bool(pid) and procs.comm(pid) in ("unshare", "systemd-nspawn")


def _kind(index: int, n: int, systemd_hosts: int) -> str:
    return "systemd" if index > n - systemd_hosts else "shared"


def _accepts(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False
