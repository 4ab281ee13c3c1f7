"""``bismuth-provider --zygote``: providers forked from one process that has imported them.

A provider's start is mostly Python importing aiohttp and the provider (a quarter of a
second of CPU, more on a busy host), for every container. The agent runs one zygote, as the
providers' user with no new privileges and no cluster key, like any provider; it imports all
that once, then forks a provider per request:

- the agent sends, on the zygote's stdin (a ``SOCK_SEQPACKET`` Unix socket), one message:
  JSON ``{"env": {BISMUTH_*...}, "token": "..."}`` with two descriptors, the provider's log
  file and the read end of a *go* pipe;
- the zygote forks and answers ``{"pid": <pid>}``; the child starts its own session, takes
  the log as stdout and stderr, the token on stdin, the settings as its environment, and
  waits for a byte on the go pipe: the agent moves it into the container's provider cgroup
  first, so nothing it does escapes that cgroup's limits. EOF on the go pipe ends it;
- then the child runs the provider exactly as ``bismuth-provider`` does, and exits.

The zygote keeps no state of a child (the kernel reaps them: ``SIGCHLD`` is ignored); the
agent watches each child by its PID. EOF on stdin (the agent went away) ends the zygote;
the providers it forked run on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable

MESSAGE_MAX = 1 << 16  # bytes of one request (settings and token)
CONTROL = 0  # the zygote's socket to the agent: its stdin


def preload() -> Callable[[list[str] | None], None]:
    """Import what every provider runs (not S3's boto3: only s3:// providers need it)."""
    import sqlite3  # noqa: F401

    import aiohttp.web  # noqa: F401
    import uvloop  # noqa: F401

    from . import app, main, secretstore  # noqa: F401
    from .storage import local  # noqa: F401

    return main.main


def serve(control: socket.socket, run: Callable[[list[str] | None], None]) -> None:
    """Fork a provider for each request until the agent closes the socket."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, MESSAGE_MAX, 2)
        except InterruptedError:
            continue
        if not data:
            return
        try:
            request = json.loads(data)
            env, token = dict(request["env"]), str(request["token"])
            log_fd, go_fd = fds
        except (ValueError, KeyError, TypeError) as exc:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": f"bad request: {exc!r}"}).encode())
            continue
        pid = os.fork()
        if pid == 0:
            control.close()
            _child(env, token, log_fd, go_fd, run)  # never returns
        os.close(log_fd)
        os.close(go_fd)
        control.send(json.dumps({"pid": pid}).encode())


def _child(
    env: dict[str, str],
    token: str,
    log_fd: int,
    go_fd: int,
    run: Callable[[list[str] | None], None],
) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        reader, writer = os.pipe()
        os.write(writer, token.encode() + b"\n")  # a pipe holds it whole
        os.close(writer)
        os.dup2(reader, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(reader)
        os.close(log_fd)
        go = os.read(go_fd, 1)  # in its cgroup once this byte comes
        os.close(go_fd)
        if not go:
            os._exit(1)
        os.environ.clear()
        os.environ.update(env)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        code = 0
        run([])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    run = preload()
    control = socket.socket(fileno=os.dup(CONTROL))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, CONTROL)  # descriptors 0-2 stay taken: a child's own go at 0-2 later
    os.close(null)
    with control:
        serve(control, run)
