"""Files the agent prepares for a container: /etc files and the repo clone."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bismuth_agent import files


def test_etc_files(tmp_path):
    cid = uuid.uuid4()
    mounts = files.write_etc_files(tmp_path / "c", cid, "10.253.0.2", ["192.0.2.53"])
    assert set(mounts) == {"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}
    hosts = Path(mounts["/etc/hosts"]).read_text()
    assert f"10.253.0.2\t{cid}" in hosts and "127.0.0.1\tlocalhost" in hosts
    assert Path(mounts["/etc/resolv.conf"]).read_text() == "nameserver 192.0.2.53\n"
    assert Path(mounts["/etc/hostname"]).read_text() == f"{cid}\n"


def test_loopback_nameservers_are_not_passed_on(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch x\nnameserver bad\n")
    assert files.nameservers(str(conf)) == ["192.0.2.1"]
    assert files.nameservers(str(tmp_path / "missing")) == []


def make_repo(path):
    path.mkdir()

    def git(*args):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (path / "app.py").write_text("print('hi')\n")
    git("add", "app.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "x")


async def test_clone_is_owned_by_the_mapped_user(tmp_path):
    make_repo(tmp_path / "src")
    uid = gid = 1_001_000 if os.geteuid() == 0 else os.getuid()
    repo = await files.clone_repo(tmp_path / "c", f"file://{tmp_path / 'src'}", "main", uid, gid)
    assert Path(repo, "app.py").read_text() == "print('hi')\n"
    assert os.stat(os.path.join(repo, "app.py")).st_uid == uid
    assert os.stat(repo).st_uid == uid


async def test_clone_failures_say_why(tmp_path):
    make_repo(tmp_path / "src")
    with pytest.raises(files.PrepareFailed, match="branch nope"):
        await files.clone_repo(tmp_path / "c", str(tmp_path / "src"), "nope", 0, 0)
    with pytest.raises(files.PrepareFailed, match="cannot clone"):
        await files.clone_repo(tmp_path / "c", str(tmp_path / "missing"), "main", 0, 0)
