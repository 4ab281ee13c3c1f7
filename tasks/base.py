"""The ground every component stands on: Debian packages, kernel settings, directories.

Packages: ``debian_packages`` on every host, plus ``agent_packages`` on ``agents``,
``zookeeper_packages`` on ``zookeeper``, ``frontend_packages`` on ``frontends`` and, for
checkout installs (which build the toolkit and the base image on the host),
``build_packages``. Agent hosts get the kernel modules and sysctls of
``agent_kernel_modules`` and ``agent_sysctls``, loaded and set now; ``modules_conf`` and
``sysctl_conf`` name files that make them last across reboots (none by default: the kernel
loads modules on use). Forwarding is the agent's: it turns it on with a
firewall rule that forwards container traffic only.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from tasks.facts import MissingKernelModules
from tasks.rendering import template_file
from tasks.roles import AGENTS, FRONTENDS, ZOOKEEPER, has_role
from tasks.toolkit import wheel_install


def packages() -> list[str]:
    wanted = list(host.data.debian_packages)
    if has_role(AGENTS):
        wanted += host.data.agent_packages
    if has_role(ZOOKEEPER):
        wanted += host.data.zookeeper_packages
    if has_role(FRONTENDS):
        wanted += host.data.frontend_packages
    if not wheel_install():
        wanted += host.data.build_packages
    return list(dict.fromkeys(wanted))


@deploy("Base")
def base() -> None:
    """Debian packages (``make up`` installs them first, so normally no change), directories
    and, on agent hosts, kernel modules and sysctls."""
    apt.packages(name="Debian packages", packages=packages(), no_recommends=True)
    for what, path, mode in (
        ("Configuration directory", host.data.etc_dir, "755"),
        ("State directory", host.data.var_dir, "755"),
        ("Log directory", host.data.log_dir, "755"),
        ("Runtime directory", host.data.run_dir, "755"),
    ):
        files.directory(name=what, path=path, mode=mode)
    if has_role(AGENTS):
        kernel()


def kernel() -> None:
    """Modules and sysctls for containers' networking: now, and at boot if so configured."""
    modules = [str(m) for m in host.data.agent_kernel_modules]
    if modules:
        server.shell(
            name=f"Load kernel modules {', '.join(modules)}",
            commands=[shlex.join(["modprobe", "-a", *modules])],
            _if=lambda: bool(host.get_fact(MissingKernelModules, modules=modules)),
        )
    if modules and host.data.modules_conf:
        template_file(
            "Kernel modules at boot",
            "modules-load.conf.j2",
            host.data.modules_conf,
            "644",
            modules=modules,
        )
    conf = str(host.data.sysctl_conf or "")
    for key, value in dict(host.data.agent_sysctls).items():
        server.sysctl(
            name=f"Set {key} = {value}", key=key, value=value, persist=bool(conf), persist_file=conf
        )
