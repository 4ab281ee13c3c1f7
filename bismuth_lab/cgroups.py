"""Cgroups that processes of lab hosts left on the machine's shared cgroup tree.

Agents on lab hosts put their containers under the cgroup parent ``/bismuth-<node ip>``
(in every v1 hierarchy, and in the v2 tree where that is mounted). Once the host's
processes are gone those directories are empty and are removed, deepest first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_name(address: str) -> str:
    return f"bismuth-{address}"


def lab_cgroups(addresses: Iterable[str], root: Path = CGROUP_ROOT) -> list[Path]:
    """``bismuth-<ip>`` directories of the given hosts, at the root and atop each hierarchy."""
    names = [cgroup_name(a) for a in addresses]
    tops = [root, *sorted(p for p in root.iterdir() if p.is_dir() and os.path.ismount(p))]
    return [top / name for top in tops for name in names if (top / name).is_dir()]


def remove_tree(top: Path) -> list[str]:
    """rmdir ``top`` and every cgroup below it, deepest first; return what could not go."""
    failed = []
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append(f"{dirpath}: {exc.strerror}")
    return failed


def remove_lab_cgroups(addresses: Iterable[str], root: Path = CGROUP_ROOT) -> list[str]:
    """Remove every lab host's cgroups; return the ones still busy (empty list: all gone)."""
    failed: list[str] = []
    if not root.is_dir():
        return failed
    for top in lab_cgroups(addresses, root):
        failed += remove_tree(top)
    return failed


def remove_host_cgroups(names: Iterable[str], root: Path = CGROUP_ROOT) -> list[str]:
    """Remove the own cgroups of systemd hosts (``lab-<name>``); return the busy ones."""
    failed: list[str] = []
    for name in names:
        for tree in [p for p in root.glob(f"*/lab-{name}") if p.is_dir()] if root.is_dir() else []:
            failed += remove_tree(tree)
    return failed
