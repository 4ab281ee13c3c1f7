"""Pre-flight checks: every host is checked before the deploy changes anything anywhere.

Once per run, for every host of the run at once (so all problems show together), from facts
only: the host runs Debian ``required_debian`` (12); the deploy acts as root there; the file
systems it writes (``var_dir``, and ``toolkit_dir`` where it installs wheels) have
``min_free_disk_mb`` free; where it installs wheels (wheel installs; checkout installs of
agent hosts, for their providers), ``toolkit_python`` has this machine's Python major.minor
and the host this machine's architecture (the wheels are built here, for it);
and in a fleet (an inventory of more than one host) each host's ``node_ip`` is set to its
own address in the fleet: not the single-node default (loopback), and no other host's. Any
problem stops the run before its first operation, with one line per problem per host, and
pyinfra exits non-zero; ``--dry`` runs the checks too.
"""

from __future__ import annotations

import ipaddress
import platform
import shlex
import sys
import threading
from collections.abc import Iterable

from pyinfra import inventory, state
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError
from pyinfra.api.host import Host

from tasks.roles import AGENTS, ROLES

CONTROL_PYTHON = "{}.{}".format(*sys.version_info[:2])
CONTROL_MACHINE = platform.machine()
LOCK = threading.Lock()
_found: dict[str, list[str]] = {}


class HostProfile(FactBase[dict[str, str]]):
    """Release, architecture, uid, a Python's version and free space under some paths."""

    def command(self, python: str, paths: list[str]) -> str:
        free = " ".join(
            f'p={shlex.quote(path)}; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; '
            f'echo "free {path}=$(df -Pk "$p" | awk \'NR==2 {{print $4}}\')";'
            for path in paths
        )
        version = "import sys; print('%d.%d' % sys.version_info[:2])"
        return (
            '. /etc/os-release 2>/dev/null; echo "id=$ID"; echo "version=$VERSION_ID"; '
            'echo "machine=$(uname -m)"; echo "uid=$(id -u)"; '
            f'echo "python=$({shlex.quote(python)} -c {shlex.quote(version)} 2>/dev/null)"; '
            f"{free}"
        )

    def process(self, output: list[str]) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in output if "=" in line)


def preflight() -> None:
    """Raise :class:`DeployError` listing every host's problems, if there are any."""
    with LOCK:
        if not _found:
            active = set(state.inventory.get_active_hosts())
            _found.update(check_all(h for h in inventory if h in active))
    lines = [f"  {name}: {problem}" for name, problems in _found.items() for problem in problems]
    if lines:
        raise DeployError("pre-flight checks failed, nothing was changed:\n" + "\n".join(lines))


def check_all(hosts: Iterable[Host]) -> dict[str, list[str]]:
    """Each host's problems, in inventory order."""
    fleet = list(inventory)
    return {h.name: host_problems(h) + node_ip_problems(h, fleet) for h in hosts}


def written_paths(target: Host) -> list[str]:
    paths = [str(target.data.var_dir)]
    if _wheels(target):
        paths.append(str(target.data.toolkit_dir))
    return paths


def _wheels(target: Host) -> bool:
    """Whether ``target`` installs wheels built here: wheel installs, and checkout installs
    of agent hosts (their providers run from a versioned install of the checkout)."""
    if str(target.data.toolkit_install) == "wheel":
        return True
    single = not any(inventory.get_group(role, default=[]) for role in ROLES)
    return single or AGENTS in target.groups


def host_problems(target: Host) -> list[str]:
    paths = written_paths(target)
    python = str(target.data.toolkit_python)
    found = target.get_fact(HostProfile, python=python, paths=paths)
    problems = []
    wanted = str(target.data.required_debian)
    if found.get("id") != "debian" or found.get("version") != wanted:
        release = f"{found.get('id') or 'unknown'} {found.get('version') or ''}".strip()
        problems.append(f"runs {release}, not Debian {wanted} (required_debian)")
    if found.get("uid") != "0":
        problems.append(f"the deploy acts as uid {found.get('uid')}, not root (use root or --sudo)")
    need = int(target.data.min_free_disk_mb)
    for path in paths:
        free = found.get(f"free {path}", "")
        if free.isdigit() and int(free) // 1024 < need:
            problems.append(
                f"{int(free) // 1024} MiB free for {path}, needs {need} (min_free_disk_mb)"
            )
    if _wheels(target):
        problems += _wheel_problems(found, python)
    return problems


def _wheel_problems(found: dict[str, str], python: str) -> list[str]:
    problems = []
    if not found.get("python"):
        problems.append(f"toolkit_python {python} does not run there")
    elif found["python"] != CONTROL_PYTHON:
        problems.append(
            f"toolkit_python {python} is Python {found['python']}; the wheels are built "
            f"here for Python {CONTROL_PYTHON}"
        )
    if found.get("machine") != CONTROL_MACHINE:
        problems.append(
            f"architecture {found.get('machine')}; the wheels are built here for {CONTROL_MACHINE}"
        )
    return problems


def node_ip_problems(target: Host, fleet: list[Host]) -> list[str]:
    """In a fleet, ``node_ip`` must be a host's own non-loopback IPv4 address."""
    if len(fleet) < 2:
        return []
    value = str(target.data.node_ip)
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        return [f"node_ip {value!r} is not an IPv4 address"]
    if address.is_loopback:
        return [
            f"node_ip is {value}, the single-node default: set node_ip for this host in "
            "the inventory (its address in the fleet)"
        ]
    others = [h.name for h in fleet if h.name != target.name and str(h.data.node_ip) == value]
    if others:
        return [f"node_ip {value} is also the node_ip of {', '.join(others)}"]
    return []
