"""containerd, the container runtime the agent drives, run by the service manager.

It runs on the hosts of the ``agents`` group, with a config of its own
(``<etc_dir>/containerd.toml``: root, state and socket from group data, the CRI plugin off),
as the program ``bismuth-containerd``. Debian's package also ships ``containerd.service``;
where systemd is PID 1 that one is stopped and disabled, since it would use the same socket
and root.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from tasks.rendering import template_file
from tasks.roles import AGENTS, has_role
from tasks.services import Program, program, program_log, stop_debian_service
from tasks.waiting import wait_until

DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)
START_TIMEOUT = 60.0


def ctr(*args: str) -> str:
    """A ``ctr`` command line aimed at this deploy's containerd and namespace."""
    address, namespace = host.data.containerd_address, host.data.containerd_namespace
    return shlex.join(["ctr", "-a", address, "-n", namespace, *args])


@deploy("containerd")
def containerd() -> None:
    """State directory, config and the daemon; waits until it answers when (re)started."""
    if not has_role(AGENTS):
        return
    # 711: a user-namespaced container's root must reach its bundle in here. (containerd
    # makes its root directory itself, and keeps it 700.)
    files.directory(name="containerd state directory", path=host.data.containerd_state, mode="711")
    path = f"{host.data.etc_dir}/containerd.toml"
    config = template_file(
        "containerd configuration",
        "containerd.toml.j2",
        path,
        "644",
        root=host.data.containerd_root,
        state=host.data.containerd_state,
        address=host.data.containerd_address,
        disabled_plugins=DISABLED_PLUGINS,
    )
    stop_debian_service("containerd.service")
    spec = Program(
        name="bismuth-containerd",
        description="containerd for the Bismuth toolkit",
        command=(host.data.containerd_command, "--config", path),
        priority=200,  # before the agent, which drives it
    )
    started = program(spec, [config])
    answers = f"{ctr('version')} >/dev/null 2>&1"
    server.shell(
        name="Wait until containerd answers",
        commands=[wait_until(answers, START_TIMEOUT, "containerd", program_log(spec.name))],
        _if=started,
    )
