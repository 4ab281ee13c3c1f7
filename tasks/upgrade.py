"""Rolling upgrade of the agents to this run's version, one batch of hosts at a time.

First every host of ``agents`` gets the new version installed next to the running one
(:func:`tasks.toolkit.toolkit` without switching anything: nothing runs it yet). Then, batch
by batch (``upgrade_batch_size`` hosts, in inventory order), each host of the batch:

1. records the PID of every containerd task (:mod:`tasks.agent_gate` ``record``);
2. points ``<toolkit_dir>/bismuth-agent`` and ``current`` at the new version and restarts
   the agent (only the agent: its containers and their providers keep running);
3. waits, up to ``upgrade_gate_wait`` seconds, until the agent passes its health gate: alive
   in ZooKeeper with the new version, every container of its node adopted and ``Running``,
   every task the same process as before. An agent that does not stay up fails at once.

A host that fails its gate is rolled back (links back, agent restarted on its old version),
its failure and the reason are reported, and no further batch starts: the hosts not yet
reached keep their old version, and pyinfra exits non-zero. Hosts whose agent already runs
the version are left alone, so a second run changes nothing. Each host logs its upgrades to
``<log_dir>/upgrades.log``.

The batches are ordered by making every host register every batch's operation (hosts outside
a batch skip it): pyinfra runs an operation on all its hosts before the next one starts.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path

from pyinfra import host, state
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server

from tasks.agent import AGENT_PROGRAM
from tasks.cluster_key import cluster_key_file
from tasks.roles import AGENTS, has_role, members
from tasks.sample import local_url
from tasks.services import program_log, restart_command, supervisorctl, uses_systemd
from tasks.toolkit import daemon_version, toolkit, toolkit_dir, version, wheel_install
from tasks.zookeeper import connect_string

GATE = Path(__file__).resolve().parent / "agent_gate.py"
logger = logging.getLogger("pyinfra")


def batches() -> list[list[str]]:
    """The agent hosts in inventory order, ``upgrade_batch_size`` at a time."""
    size = int(host.data.upgrade_batch_size)
    if size < 1:
        raise DeployError(f"upgrade_batch_size must be at least 1, not {size}")
    hosts = members(AGENTS)
    return [hosts[i : i + size] for i in range(0, len(hosts), size)]


@deploy("Stage the new version")
def stage() -> None:
    """Install this run's version on every agent host, next to the one that runs."""
    if not wheel_install():
        raise DeployError('upgrade.py needs toolkit_install = "wheel" (versioned installs)')
    if has_role(AGENTS):
        toolkit(make_current=False)


@deploy("Rolling agent upgrade")
def rolling_upgrade() -> None:
    """One operation per batch, in order; each upgrades its own hosts and gates them."""
    target = version()
    plan = batches()
    for index in host.loop(range(len(plan))):
        batch = plan[index]
        server.shell(
            name=f"Upgrade agents to {target}: batch {index + 1}/{len(plan)} ({', '.join(batch)})",
            commands=[rollout_script(target)],
            _if=takes_part(batch, target),
        )


def takes_part(batch: list[str], target: str) -> Callable[[], bool]:
    """Whether this host upgrades now: in the batch, no host failed yet, not on ``target``."""

    def check() -> bool:
        if host.name not in batch:
            return False
        failed = sorted(h.name for h in state.failed_hosts)
        if failed:
            host.log_styled(
                f"left on its version: the rollout stopped at {', '.join(failed)}",
                log_func=logger.warning,
                fg="yellow",
            )
            return False
        return daemon_version(AGENT_PROGRAM) != target

    return check


def rollout_script(target: str) -> str:
    """Shell: record, switch, restart, gate; on failure roll back and fail."""
    td = toolkit_dir()
    restart = f"{restart_command(AGENT_PROGRAM)} >&2 || true"
    log = program_log(AGENT_PROGRAM)
    tail = (
        f"tail -n 20 {shlex.quote(log)} >&2"
        if log
        else f"journalctl -u {AGENT_PROGRAM}.service -n 20 --no-pager >&2"
    )
    lines = [
        "set -u",
        f"td={shlex.quote(td)}; link=$td/{AGENT_PROGRAM}; new={shlex.quote(target)}",
        f"tasks={shlex.quote(host.data.run_dir)}/agent-upgrade.tasks",
        f"history={shlex.quote(host.data.log_dir)}/upgrades.log",
        'old=$(readlink "$link") || { echo "no agent at $link: run deploy.py first" >&2; exit 1; }',
        'switch() { ln -sfn "$1" "$link.next" && mv -T "$link.next" "$link" &&'
        ' ln -sfn "$1" "$td/current.next" && mv -T "$td/current.next" "$td/current"; }',
        f"gate_source={shlex.quote(GATE.read_text())}",
        f'gate() {{ "$td/$old/bin/python" -c "$gate_source" "$@" {gate_flags()}; }}',
        'note() { echo "$(date -u +%FT%T.%3NZ) $*" >> "$history"; }',
        'gate record "$tasks" || exit 1',
        "began=$(date +%s%N)",
        f'switch "$new"; {restart}',
        'if gate wait "$tasks" "$new"; then',
        '  note "agent $old -> $new: healthy after $(( ($(date +%s%N) - began) / 1000000 )) ms"',
        "  exit 0",
        "fi",
        f'echo "rolling the agent of {host.data.node_ip} back to $old" >&2',
        f"{tail}",
        f'switch "$old"; {restart}',
        'if gate wait "$tasks" "$old" >&2; then note "agent $old -> $new: failed its health gate;'
        ' back on $old"; else note "agent $old -> $new: failed; back on $old, not healthy"; fi',
        "exit 1",
    ]
    return "\n".join(lines)


def gate_flags() -> str:
    address, port = host.data.node_ip, host.data.agent_port
    return shlex.join(
        [
            "--containerd",
            host.data.containerd_address,
            "--namespace",
            host.data.containerd_namespace,
            "--zookeeper",
            connect_string(),
            "--env",
            host.data.zookeeper_env,
            "--cluster-key-file",
            cluster_key_file(),
            "--node",
            address,
            "--agent-url",
            f"{local_url(f'{address}:{port}')}healthz",
            "--timeout",
            str(host.data.upgrade_gate_wait),
            "--down-if",
            service_down_check(),
        ]
    )


def service_down_check() -> str:
    """Shell: exits 0 while the agent's service has stopped or keeps failing to start."""
    if uses_systemd():
        state_of = f"systemctl show -p SubState --value {AGENT_PROGRAM}.service"
        return f"{state_of} | grep -Eqx 'auto-restart|failed|dead'"
    return f"{supervisorctl()} status {AGENT_PROGRAM} | grep -Eq ' (BACKOFF|FATAL|EXITED|STOPPED) '"
