"""The init (PID 1) of one lab host.

Started by ``unshare --mount --uts --pid --fork --mount-proc`` inside the host's network
namespace, with one argument: the host's ``init.json``. It mounts the host's private
directories, files and tmpfs (in its own mount namespace, so the machine sees none of
them), sets the hostname, starts sshd, then reaps orphans until it gets SIGTERM. Killing
it ends every process of the host, nested PID namespaces (containers) included.

``init.json``::

    {"hostname": "lab1", "state_dir": "...",
     "binds": [["<source>", "<target>"], ...],   # directories and files
     "tmpfs": [["<target>", "<mode>"], ...],
     "sshd": ["/usr/sbin/sshd", "-D", "-e", "-f", "..."], "sshd_log": "..."}
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from bismuth_lab.mounts import Mounter, mount_points_under, mounts_of

_STOP = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def drop_foreign_mounts(targets: list[str], mounter: Mounter) -> None:
    """Detach what the machine has mounted at or below ``targets`` (its containers' rootfs
    under /run/containerd, say) and every ``ip netns`` handle, so this host pins none of them.
    """
    for mount in reversed(mounts_of()):
        if mount.fstype == "nsfs":
            mounter.detach(mount.mount_point)
    for target in targets:
        for point in mount_points_under(target, mounts_of()):
            mounter.detach(point)


def keep_visible(state_dir: str, fd: int, mounter: Mounter) -> None:
    """Mount the state dir back at its path if the host's mounts hid it (it may lie under
    /tmp): sshd reads its host key and the authorized keys from there.
    """
    before = os.fstat(fd)
    try:
        now = os.stat(state_dir)
        if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
            return
    except FileNotFoundError:
        pass
    os.makedirs(state_dir, exist_ok=True)
    mounter.bind(f"/proc/self/fd/{fd}", state_dir)


def prepare(config: dict[str, Any]) -> None:
    """Mounts and hostname of the host, in this process's own mount and UTS namespaces."""
    mounter = Mounter()
    fd = os.open(config["state_dir"], os.O_PATH | os.O_DIRECTORY)
    try:
        binds = [(str(s), str(t)) for s, t in config["binds"]]
        tmpfs = [(str(t), str(m)) for t, m in config["tmpfs"]]
        drop_foreign_mounts([t for _, t in binds] + [t for t, _ in tmpfs], mounter)
        for source, target in binds:
            mounter.bind(source, target)
        for target, mode in tmpfs:
            mounter.tmpfs(target, mode)
        keep_visible(config["state_dir"], fd, mounter)
    finally:
        os.close(fd)
    socket.sethostname(config["hostname"])


def start_sshd(config: dict[str, Any]) -> subprocess.Popen[bytes]:
    with open(config["sshd_log"], "ab") as log:
        return subprocess.Popen(
            config["sshd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/"
        )


def reap_forever() -> None:
    """Collect every exited child (orphans of the host are reparented here) until stopped."""
    watched = {signal.SIGCHLD, *_STOP}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if signal.sigwaitinfo(watched).si_signo in _STOP:
            return


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bismuth_lab.init INIT_JSON", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[0]).read_text())
    try:
        prepare(config)
        sshd = start_sshd(config)
    except OSError as exc:
        print(f"lab host {config.get('hostname')}: {exc}", file=sys.stderr)
        return 1
    print(f"lab host {config['hostname']}: sshd started (pid {sshd.pid} here)", file=sys.stderr)
    reap_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
