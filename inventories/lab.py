"""Lab hosts on this machine (``python -m bismuth_lab up N``), reached over SSH.

Reads the lab's record ``lab.json`` from ``$BISMUTH_LAB_STATE``, else /var/lib/bismuth-lab.
Bring the lab up first, then run pyinfra from the repository root (where it finds
``group_data/``)::

    .venv/bin/python -m bismuth_lab up 3
    .venv/bin/pyinfra -y inventories/lab.py exec -- hostname
    .venv/bin/pyinfra -y inventories/lab.py deploy.py
    BISMUTH_LAB_STATE=/var/tmp/mylab .venv/bin/pyinfra -y inventories/lab.py ...   # another lab

Groups: ``zookeeper`` (every host when there are at most 3, else the first 3), ``agents``
(every host), ``frontends`` and ``api`` (the first host); hosts that boot systemd
(``up N --systemd K``: the last K) are agents only, counted out of the other groups. Each
host has ``ssh_hostname`` and ``node_ip`` (its lab address), ``ssh_user`` root, and the
lab's ``ssh_key`` and ``ssh_known_hosts_file``. Lab hosts keep only the directories in
``bismuth_lab.PRIVATE_DIRS`` and ``bismuth_lab.TMPFS_DIRS`` to themselves; the rest of the
file system is the machine's (a systemd host has a file system of its own).
"""

from __future__ import annotations

from typing import Any

from bismuth_lab.state import default_state_dir, load

Host = tuple[str, dict[str, Any]]


def _lab_hosts() -> tuple[list[Host], list[Host]]:
    """Every host, and those sharing the machine's file system (not booting systemd)."""
    state_dir = default_state_dir()
    lab = load(state_dir)
    if lab is None or not lab.complete:
        raise RuntimeError(
            f"no lab at {state_dir}: bring one up with `python -m bismuth_lab up N`"
            " (or point BISMUTH_LAB_STATE at its state dir)"
        )
    every = [
        (
            h.name,
            {
                "ssh_hostname": h.address,
                "ssh_user": "root",
                "ssh_key": lab.key,
                "ssh_known_hosts_file": lab.known_hosts,
                "node_ip": h.address,
            },
        )
        for h in lab.hosts
    ]
    shared = [host for host, h in zip(every, lab.hosts, strict=True) if h.kind != "systemd"]
    return every, shared


_hosts, _shared = _lab_hosts()
zookeeper = _shared if len(_shared) <= 3 else _shared[:3]
agents = list(_hosts)
frontends = _shared[:1]
api = _shared[:1]
