"""``python -m bismuth_lab``: bring lab hosts up, look at them, reach them, tear them down.

Usage::

    python -m bismuth_lab up N [--systemd K]  # lab1..labN, the last K booting systemd
                                        # (a no-op when they already run)
    python -m bismuth_lab status [--json]
    python -m bismuth_lab ssh NAME [CMD...]
    python -m bismuth_lab down          # kills everything the hosts ran, removes the lab

Options (before or after the command): ``--state DIR`` (default ``$BISMUTH_LAB_STATE`` or
/var/lib/bismuth-lab), ``--subnet``, ``--bridge``, ``--prefix`` (defaults: those of the lab
recorded in the state dir, else 10.250.0.0/24, ``bislab0``, ``lab``). Needs root.

Exit codes: 0 success (``status``: every host runs); 1 failure or, for ``status``, no lab
or a host down; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from bismuth_lab.lab import HostStatus, Lab, LabError
from bismuth_lab.state import STATE_ENV


def _add_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--state", default=default, metavar="DIR", help=f"state dir (env {STATE_ENV})"
    )
    parser.add_argument("--subnet", default=default, help="IPv4 subnet (10.250.0.0/24)")
    parser.add_argument("--bridge", default=default, help="bridge name (bislab0)")
    parser.add_argument("--prefix", default=default, help="host name prefix (lab)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bismuth_lab", description="Lab hosts: network namespaces with sshd."
    )
    _add_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_options(common, argparse.SUPPRESS)  # after the command: overrides only when given
    up = commands.add_parser("up", parents=[common], help="bring up N hosts")
    up.add_argument("n", type=int, metavar="N")
    up.add_argument(
        "--systemd",
        type=int,
        default=0,
        metavar="K",
        help="the last K hosts boot systemd in a root file system of their own",
    )
    commands.add_parser("down", parents=[common], help="tear the lab down")
    status = commands.add_parser("status", parents=[common], help="show the hosts")
    status.add_argument("--json", action="store_true", help="one JSON document")
    ssh = commands.add_parser("ssh", parents=[common], help="ssh to a host as root")
    ssh.add_argument("name")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="CMD")
    return parser


def _table(statuses: list[HostStatus]) -> str:
    rows = [("NAME", "ADDRESS", "INIT", "SSHD", "STATE")]
    for s in statuses:
        state = "running" if s.ok else "DOWN"
        rows.append(
            (s.host.name, s.host.address, str(s.host.init_pid), str(s.host.sshd_pid), state)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_up(lab: Lab, n: int, systemd_hosts: int = 0) -> int:
    before = lab.state()
    started = time.monotonic()
    recorded = lab.up(n, systemd_hosts=systemd_hosts)
    took = time.monotonic() - started
    what = "already up, nothing changed" if before else f"up in {took:.2f} s"
    print(f"lab at {lab.state_dir}: {len(recorded.hosts)} host(s) {what}")
    print(_table(lab.status()))
    print(f"ssh:    python -m bismuth_lab --state {lab.state_dir} ssh {recorded.hosts[0].name}")
    print(f"pyinfra: {STATE_ENV}={lab.state_dir} .venv/bin/pyinfra inventories/lab.py ...")
    return 0


def cmd_status(lab: Lab, as_json: bool) -> int:
    recorded = lab.state()
    statuses = lab.status()
    healthy = recorded is not None and recorded.complete and all(s.ok for s in statuses)
    if as_json:
        doc: dict[str, Any] = {"state_dir": str(lab.state_dir), "exists": recorded is not None}
        doc["running"] = healthy
        if recorded is not None:
            doc |= recorded.to_json()
            for host, s in zip(doc["hosts"], statuses, strict=True):
                host |= {"init_running": s.init_running, "sshd_running": s.sshd_running}
        print(json.dumps(doc, indent=2))
    elif recorded is None:
        print(f"no lab at {lab.state_dir}")
    else:
        note = "" if recorded.complete else " (half made: run down)"
        print(f"lab at {lab.state_dir}: subnet {recorded.subnet}, bridge {recorded.bridge}{note}")
        print(_table(statuses))
    return 0 if healthy else 1


def cmd_down(lab: Lab) -> int:
    started = time.monotonic()
    if lab.down():
        print(f"lab at {lab.state_dir} removed in {time.monotonic() - started:.2f} s")
    else:
        print(f"no lab at {lab.state_dir}: nothing to do")
    return 0


def cmd_ssh(lab: Lab, name: str, remote: Sequence[str]) -> int:
    words = list(remote[1:] if remote[:1] == ["--"] else remote)
    argv = lab.ssh_argv(name, words)
    os.execvp(argv[0], argv)
    return 1  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lab = Lab(args.state, args.subnet, args.bridge, args.prefix)
        if args.command == "up":
            return cmd_up(lab, args.n, args.systemd)
        if args.command == "status":
            return cmd_status(lab, args.json)
        if args.command == "down":
            return cmd_down(lab)
        return cmd_ssh(lab, args.name, args.remote)
    except LabError as exc:
        print(f"bismuth_lab: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
