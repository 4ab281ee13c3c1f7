"""The OCI runtime spec of a function's container: what isolates hostile code (DESIGN §5).

Pure: :func:`container_spec` turns a :class:`ContainerPlan` into the JSON document runc
runs, with no I/O. Every container gets new cgroup, ipc, mount, network, pid, user and uts
namespaces (the user and network ones made by the agent beforehand, :mod:`.namespaces`, and
joined by runc: ``ContainerPlan.joined``); container ids 0..size-1 map onto an unprivileged
host range; the process runs as uid/gid 1000 with no capabilities and no new privileges;
cpu, memory and pids are limited by its own cgroup under the agent's parent; system calls
are filtered by the seccomp profile of :mod:`bismuth_agent.seccomp`; kernel paths are
masked or read-only; /etc/hosts, /etc/resolv.conf and /etc/hostname come from files the
agent writes. The root filesystem is read-only: /tmp (a tmpfs inside the memory limit) and
/dev/shm are the only writable places, and /repo is mounted read-only.

With an init (``ContainerPlan.init``: Debian's static ``tini``, as ``docker run --init``
does), the host's binary is mounted read-only at :data:`INIT_PATH` and runs as PID 1 with
the function's command as its child: it forwards SIGTERM (so a process that installs no
handler still stops at once; PID 1 itself would ignore it) and reaps orphaned processes, so
none stays a zombie. Images need not contain it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bismuth_core.definition import ExecutableMode, FunctionDefinition, ServerMode

OCI_VERSION = "1.0.2"
CONTAINER_UID = 1000
CONTAINER_GID = 1000
CPU_PERIOD = 100_000  # microseconds
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# An Executable function's container idles in this while each request runs the program.
IDLE_COMMAND = ("/bin/sleep", "infinity")
INIT_PATH = "/dev/init"  # on /dev, a tmpfs: the image gains no mount point
NAMESPACES = ("pid", "ipc", "uts", "mount", "network", "user", "cgroup")

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


@dataclass(frozen=True)
class IdMapping:
    """Container ids ``0..size-1`` appear on the host as ``host_start..host_start+size-1``."""

    host_start: int
    size: int = 65536

    def to_json(self) -> list[dict[str, int]]:
        return [{"containerID": 0, "hostID": self.host_start, "size": self.size}]


@dataclass(frozen=True)
class ContainerPlan:
    """Everything the spec depends on, decided by the agent before creating the container."""

    container_id: uuid.UUID
    function_id: uuid.UUID
    definition: FunctionDefinition
    auth_token: str
    ids: IdMapping
    cgroup_parent: str  # e.g. "/bismuth-10.0.0.5": each agent its own
    etc_files: dict[str, str] = field(default_factory=dict)  # "/etc/hosts" -> host path
    repo_dir: str | None = None  # host path of the clone mounted at /repo
    pids_limit: int = 512
    nofile_limit: int = 4096
    seccomp: Mapping[str, Any] | None = None  # the runtime spec's linux.seccomp
    init: str | None = None  # host path of a static init run as PID 1 (tini-static)
    start_cpu: float = 0.0  # cores until the entrypoint listens, if more than the definition's
    # Namespaces the agent made for the container, by type ("user", "network") -> their
    # files: runc joins them instead of making new ones.
    joined: Mapping[str, str] = field(default_factory=dict)

    @property
    def cgroup_path(self) -> str:
        return f"{self.cgroup_parent.rstrip('/')}/{self.container_id}"

    @property
    def argv(self) -> tuple[str, ...]:
        mode = self.definition.invoke_mode
        if isinstance(mode, ServerMode):
            return mode.argv
        assert isinstance(mode, ExecutableMode)
        return IDLE_COMMAND

    @property
    def cwd(self) -> str:
        return "/repo" if self.definition.repo else "/"


def environment(plan: ContainerPlan) -> list[str]:
    return [
        f"PATH={PATH}",
        "HOME=/home/bismuth",
        f"BISMUTH_AUTH={plan.auth_token}",
        f"BISMUTH_CONTAINER_ID={plan.container_id}",
        f"BISMUTH_FUNCTION_ID={plan.function_id}",
    ]


def process(plan: ContainerPlan, argv: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The container's process (``argv`` overrides it, as for an exec, which needs no init)."""
    args = list(argv or plan.argv)
    if plan.init and argv is None:
        args = [INIT_PATH, "--", *args]
    return {
        "terminal": False,
        "user": {"uid": CONTAINER_UID, "gid": CONTAINER_GID, "additionalGids": []},
        "args": args,
        "env": environment(plan),
        "cwd": plan.cwd,
        "capabilities": {
            "bounding": [],
            "effective": [],
            "inheritable": [],
            "permitted": [],
            "ambient": [],
        },
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "hard": plan.nofile_limit, "soft": plan.nofile_limit}
        ],
        "noNewPrivileges": True,
        "oomScoreAdj": 500,
    }


def _mounts(plan: ContainerPlan) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            # The only writable place. tmpfs pages are charged to the memory cgroup of the
            # process that writes them: with the limit as its size, /tmp lives inside the
            # container's memory limit and never reaches the host's disk.
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={plan.definition.memory}"],
        },
    ]
    if plan.init:
        mounts.append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": plan.init,
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    if plan.repo_dir:
        mounts.append(
            {
                "destination": "/repo",
                "type": "bind",
                "source": plan.repo_dir,
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    for destination, source in sorted(plan.etc_files.items()):
        mounts.append(
            {
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
            }
        )
    return mounts


def cpu_quota(cpu: float) -> int:
    """Microseconds of CPU per :data:`CPU_PERIOD` for ``cpu`` cores (at least 1 ms)."""
    return max(int(cpu * CPU_PERIOD), 1000)


def _resources(plan: ContainerPlan) -> dict[str, Any]:
    d = plan.definition
    return {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": d.memory, "swap": d.memory},
        "cpu": {"quota": cpu_quota(max(d.cpu, plan.start_cpu)), "period": CPU_PERIOD},
        "pids": {"limit": plan.pids_limit},
    }


def container_spec(plan: ContainerPlan) -> dict[str, Any]:
    """The OCI runtime spec (config.json) of the container."""
    return {
        "ociVersion": OCI_VERSION,
        "process": process(plan),
        "root": {"path": "rootfs", "readonly": True},
        "hostname": str(plan.container_id),
        "mounts": _mounts(plan),
        "linux": {
            "uidMappings": plan.ids.to_json(),
            "gidMappings": plan.ids.to_json(),
            "namespaces": [
                {"type": kind, **({"path": plan.joined[kind]} if kind in plan.joined else {})}
                for kind in NAMESPACES
            ],
            "resources": _resources(plan),
            "cgroupsPath": plan.cgroup_path,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            **({"seccomp": plan.seccomp} if plan.seccomp is not None else {}),
        },
    }
