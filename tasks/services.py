"""How the daemons are kept running: systemd units where systemd is PID 1, else supervisord.

Without systemd the toolkit runs a supervisord of its own: its config is
``<etc_dir>/supervisord.conf``, its socket and pidfile live in ``<run_dir>``, and each
daemon is one templated file in ``<etc_dir>/supervisor.d/``. Every step is guarded so that
a second run changes nothing: supervisord is started only when it does not answer, programs
are (re)loaded only when their file changed, and a daemon is restarted only when one of its
configuration files changed.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, server, systemd

from tasks.facts import SupervisordPid, SystemdIsInit
from tasks.rendering import template_file

SYSTEMD_UNIT_DIR = "/etc/systemd/system"
# supervisord starts with this environment only, so nothing from the operator's shell
# (a stray BISMUTH_ZOOKEEPER, say) leaks into the daemons and overrides their config files.
CLEAN_ENV = "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8"


@dataclass(frozen=True)
class Program:
    """One long-running daemon, independent of what keeps it running."""

    name: str  # unit / program name, e.g. "bismuth-api"
    description: str
    command: tuple[str, ...]
    directory: str = "/"
    environment: dict[str, str] = field(default_factory=dict)
    stop_seconds: int = 10  # stop_signal, then SIGKILL after this long
    stop_signal: str = "TERM"  # what asks it to stop (nginx: QUIT, to finish its requests)
    start_seconds: int = 2  # must stay up this long to count as started
    # supervisord starts lower numbers first and stops higher numbers first, waiting for each
    # to stop: what others depend on (ZooKeeper) gets a low one.
    priority: int = 999
    # systemd: which processes a stop or restart signals. "control-group": every process of
    # the unit; "process": only the main one, so that children it started to outlive it
    # (the agent's providers) keep running. supervisord signals the program's process group
    # only, which such children have left.
    kill_mode: str = "control-group"

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def uses_systemd() -> bool:
    choice = host.data.service_manager
    if choice == "auto":
        return bool(host.get_fact(SystemdIsInit))
    if choice not in ("systemd", "supervisord"):
        raise ValueError(f"service_manager must be auto, systemd or supervisord, not {choice!r}")
    return bool(choice == "systemd")


def program_log(name: str) -> str | None:
    """The file a program's output goes to under supervisord (``None``: systemd's journal)."""
    return None if uses_systemd() else f"{host.data.log_dir}/{name}.log"


def supervisord_config() -> str:
    return f"{host.data.etc_dir}/supervisord.conf"


def supervisorctl() -> str:
    return f"supervisorctl -c {shlex.quote(supervisord_config())}"


def restart_command(name: str) -> str:
    """Shell: restart program ``name`` now, whichever service manager runs it."""
    if uses_systemd():
        return shlex.join(["systemctl", "restart", f"{name}.service"])
    return f"{supervisorctl()} restart {shlex.quote(name)}"


def supervisord_running() -> bool:
    """Whether our supervisord answered when the deploy was prepared (before any change)."""
    return host.get_fact(SupervisordPid, config=supervisord_config()) is not None


@deploy("Service manager")
def service_manager() -> None:
    """Make sure the service manager runs: nothing to do under systemd, else supervisord."""
    if uses_systemd():
        return
    etc, run, log = host.data.etc_dir, host.data.run_dir, host.data.log_dir
    files.directory(name="Supervisor program directory", path=f"{etc}/supervisor.d", mode="755")
    config = template_file(
        "Supervisord configuration",
        "supervisord.conf.j2",
        supervisord_config(),
        "644",
        socket=f"{run}/supervisord.sock",
        pidfile=f"{run}/supervisord.pid",
        log_file=f"{log}/supervisord.log",
        log_dir=log,
        programs=f"{etc}/supervisor.d/*.conf",
    )
    pid = host.get_fact(SupervisordPid, config=supervisord_config())
    conf = shlex.quote(supervisord_config())
    start = f"{CLEAN_ENV} supervisord -c {conf}"
    if pid is None:
        server.shell(
            name="Start supervisord",
            commands=[f"{supervisorctl()} pid >/dev/null 2>&1 || {start}"],
        )
    else:
        # a restart, not `supervisorctl reload`: that returns before supervisord has stopped,
        # and the next supervisorctl call would race it
        server.shell(
            name="Restart supervisord for its new configuration",
            commands=[
                f"{supervisorctl()} shutdown",
                _wait_gone(pid),
                start,
                _wait_running(supervisorctl(), "all", f"{log}/supervisord.log"),
            ],
            _if=config.did_change,
        )


# Asked when the deploy executes: whether this run (re)started the program.
Started = Callable[[], bool]


def program(spec: Program, configs: Sequence[OperationMeta] = ()) -> Started:
    """Keep ``spec`` running; restart it when any of ``configs`` (its config files) changed.

    The result tells later operations (through ``_if``) whether this run started or restarted
    it, e.g. to wait until it answers only then.
    """
    if uses_systemd():
        return _systemd_unit(spec, configs)
    return _supervisor_program(spec, configs)


def _any_changed(configs: Sequence[OperationMeta]) -> bool:
    return any(op.did_change() for op in configs)


def _supervisor_program(spec: Program, configs: Sequence[OperationMeta]) -> Started:
    ctl, name = supervisorctl(), shlex.quote(spec.name)
    log_file = f"{host.data.log_dir}/{spec.name}.log"
    unit_path = f"{host.data.etc_dir}/supervisor.d/{spec.name}.conf"
    unit = template_file(
        f"Supervisor program {spec.name}",
        "supervisor-program.conf.j2",
        unit_path,
        "644",
        program=spec,
        log_file=log_file,
    )
    # update starts added programs and restarts those whose section changed
    load = server.shell(
        name=f"Load supervisor program {spec.name}",
        commands=[f"{ctl} reread", f"{ctl} update {name}"],
        _if=unit.did_change,
    )
    restart = f"{ctl} restart {name} || {{ tail -n 30 {shlex.quote(log_file)} >&2; exit 1; }}"
    # A program of an earlier deploy whose supervisord this run starts (make down, then
    # make up) already runs by then, or retries, with its earlier unit and configuration:
    # restarted with this run's.
    revived = not supervisord_running() and host.get_fact(File, path=unit_path) is not None
    changes = [load]
    if revived:
        changes.append(
            server.shell(
                name=f"Restart {spec.name} of the earlier deploy with this one's configuration",
                commands=[restart],
            )
        )
    was_running = supervisord_running()
    if was_running:
        changes.append(
            server.shell(
                name=f"Restart {spec.name} for its new configuration",
                commands=[restart],
                _if=lambda: unit.did_not_change() and _any_changed(configs),
            )
        )

    def started() -> bool:
        return not was_running or _any_changed(changes)

    server.shell(
        name=f"Wait until {spec.name} runs",
        commands=[_wait_running(ctl, name, log_file, spec.start_seconds + 30)],
        _if=started,
    )
    return started


def _wait_running(ctl: str, names: str, log_file: str, timeout: int = 60) -> str:
    """Shell: wait until every program of ``names`` is RUNNING; fail if one dies, with a log."""
    verdict = (
        'awk \'$2 != "RUNNING" {wait = 1} $2 ~ /^(FATAL|EXITED|STOPPED)$/ {dead = 1} '
        "END {exit dead ? 2 : wait}'"
    )
    return (
        f"for _ in $(seq {timeout * 10}); do "
        f"{ctl} status {names} | {verdict}; rc=$?; "
        '[ "$rc" = 0 ] && exit 0; [ "$rc" = 2 ] && break; sleep 0.1; done; '
        f"{ctl} status {names}; tail -n 30 {shlex.quote(log_file)} >&2; exit 1"
    )


def _wait_gone(pid: int, timeout: int = 60) -> str:
    """Shell: wait until process ``pid`` has exited (a zombie counts as exited)."""
    state = f"sed -E 's/.*\\) (.).*/\\1/' /proc/{pid}/stat 2>/dev/null"
    return (
        f"for _ in $(seq {timeout * 10}); do "
        f's=$({state}) && [ "$s" != Z ] || exit 0; sleep 0.1; done; '
        f"echo 'supervisord {pid} did not exit' >&2; exit 1"
    )


def _systemd_unit(spec: Program, configs: Sequence[OperationMeta]) -> Started:
    service = f"{spec.name}.service"
    was_running = bool(host.get_fact(SystemdStatus).get(service))
    unit = template_file(
        f"systemd unit {service}",
        "systemd.service.j2",
        f"{SYSTEMD_UNIT_DIR}/{service}",
        "644",
        program=spec,
    )
    systemd.daemon_reload(name=f"Reload systemd for {service}", _if=unit.did_change)
    run = systemd.service(name=f"Run {service}", service=service, running=True, enabled=True)
    if not was_running:
        return run.did_change
    restart = systemd.service(
        name=f"Restart {service} for its new configuration",
        service=service,
        restarted=True,
        _if=lambda: unit.did_change() or _any_changed(configs),
    )
    return restart.did_change


def stop_debian_service(service: str) -> None:
    """Where systemd is PID 1, stop and disable a unit Debian's package started that a
    program of the toolkit replaces (same socket, port or state)."""
    if uses_systemd():
        systemd.service(
            name=f"Stop and disable Debian's {service}",
            service=service,
            running=False,
            enabled=False,
        )
