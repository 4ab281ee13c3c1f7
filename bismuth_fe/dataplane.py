"""``bismuthfe-nginx``: the frontend's data plane, nginx with the toolkit's Lua.

It renders nginx.conf from the frontend's configuration into ``run_dir`` (mode 0700, so only
root reaches the control socket there), prepares ``temp_dir``, and then *becomes* nginx
(``exec``, same PID), in the foreground: the service manager supervises nginx itself. SIGQUIT
stops it gracefully (in-flight requests finish, up to ``shutdown_timeout``), SIGTERM at once.
``bismuthfe-nginx --reload`` renders the file again and has the running nginx take it
(SIGHUP): no request is dropped, and the routes survive (they live in shared memory).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bismuth_core.config import ConfigError
from bismuth_core.credentials import frontend_credentials

from .config import FrontendConfig, build_parser, parse_command_line
from .nginxconf import render

SOCKET_WAIT = 10.0  # seconds a control socket may take to be let go by an old nginx


class DataPlaneError(Exception):
    """nginx cannot be started as configured; the message says why."""


def prepare(config: FrontendConfig) -> Path:
    """Directories, a fresh nginx.conf and no stale control socket; returns the conf path.

    :class:`ConfigError` if the frontend key file is missing or unusable."""
    credentials = frontend_credentials(config.frontend_key_file)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    temp_dir = Path(config.temp_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(temp_dir, 0o755)  # nginx makes its own 0700 subdirectories for its workers
    running = _running_nginx(config.pid_file)
    if running is not None:
        raise DataPlaneError(f"nginx {running} already runs with {config.pid_file}")
    _remove_stale_socket(config.control_socket)
    _write(config.nginx_conf, render(config, credentials))
    return config.nginx_conf


def command(config: FrontendConfig) -> list[str]:
    """The nginx command line for the rendered configuration."""
    return [config.nginx, "-e", "stderr", "-p", config.run_dir, "-c", str(config.nginx_conf)]


def _raise_open_files_limit() -> None:
    """Up to the hard limit: every client and upstream connection is a file descriptor
    (service managers often start programs with a soft limit of 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _running_nginx(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "nginx" else None


def _remove_stale_socket(path: Path, wait: float = SOCKET_WAIT) -> None:
    """A socket left by an nginx that was killed: nobody answers on it any more.

    The workers of a master that was killed stop on their own within a second or two (see
    lua/bismuth/frontend.lua): wait that long for them before giving up.
    """
    deadline = time.monotonic() + wait
    while path.exists():
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)
                return
        if time.monotonic() > deadline:
            raise DataPlaneError(f"something already serves the control socket {path}")
        time.sleep(0.1)


def _write(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def reload(config: FrontendConfig) -> int:
    """Render the configuration again and have the running nginx take it (SIGHUP): new
    workers start with it, the old ones finish their requests, the routes stay. A rendering
    nginx refuses leaves the running one and its file untouched. Returns nginx's PID."""
    credentials = frontend_credentials(config.frontend_key_file)
    pid = _running_nginx(config.pid_file)
    if pid is None:
        raise DataPlaneError(f"no nginx runs with {config.pid_file}")
    candidate = config.nginx_conf.with_name("nginx.conf.new")
    _write(candidate, render(config, credentials))
    check = subprocess.run(
        [config.nginx, "-t", "-q", "-e", "stderr", "-p", config.run_dir, "-c", str(candidate)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        candidate.unlink(missing_ok=True)
        raise DataPlaneError(f"nginx refuses the new configuration: {check.stderr.strip()}")
    os.replace(candidate, config.nginx_conf)
    os.kill(pid, signal.SIGHUP)
    return pid


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(
        "bismuthfe-nginx", "Run the frontend's nginx (its route table is filled by bismuthfe)."
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="have the running nginx take the configuration again, without dropping requests",
    )
    args, config = parse_command_line(argv, parser=parser)
    try:
        if args.reload:
            print(f"nginx {reload(config)} reloads its configuration")
            return
        prepare(config)
    except ConfigError as exc:
        parser.error(str(exc))
    except (DataPlaneError, OSError, subprocess.SubprocessError) as exc:
        sys.exit(f"bismuthfe-nginx: {exc}")
    _raise_open_files_limit()
    argv_nginx = command(config)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        os.execv(argv_nginx[0], argv_nginx)
    except OSError as exc:
        sys.exit(f"bismuthfe-nginx: cannot run {argv_nginx[0]}: {exc}")
