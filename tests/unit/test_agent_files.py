"""Files the agent prepares for a container: /etc files; how git is run for its repo."""

from __future__ import annotations

import uuid
from pathlib import Path

from bismuth_agent import files, repos
from bismuth_agent.repos import RepoSettings


def test_etc_files(tmp_path):
    cid = uuid.uuid4()
    mounts = files.write_etc_files(tmp_path / "c", cid, "10.253.0.2", ["192.0.2.53"])
    assert set(mounts) == {"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}
    hosts = Path(mounts["/etc/hosts"]).read_text()
    assert f"10.253.0.2\t{cid}" in hosts and "127.0.0.1\tlocalhost" in hosts
    assert Path(mounts["/etc/resolv.conf"]).read_text() == "nameserver 192.0.2.53\n"
    assert Path(mounts["/etc/hostname"]).read_text() == f"{cid}\n"
    assert files.etc_mounts(tmp_path / "c") == mounts  # known before they are written


def test_loopback_nameservers_are_not_passed_on(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch x\nnameserver bad\n")
    assert files.nameservers(str(conf)) == ["192.0.2.1"]
    assert files.nameservers(str(tmp_path / "missing")) == []


def test_git_runs_with_every_transport_but_https_off():
    settings = RepoSettings()
    argv = repos.git_command("https://g.example/a.git", "main", settings, None)
    config = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-c")
    assert config["protocol.allow"] == "never"
    assert config["protocol.https.allow"] == "always"
    assert "protocol.http.allow" not in config and "http.sslCAInfo" not in config
    assert config["credential.helper"] == ""
    clone = argv[argv.index("clone") :]
    for flag in ("--no-local", "--single-branch", "--no-tags"):
        assert flag in clone
    assert clone[clone.index("--depth") + 1] == "1"
    assert clone[-5:] == ["--branch", "main", "--", "https://g.example/a.git", "."]


def test_plain_http_and_a_ca_bundle_only_when_configured():
    settings = RepoSettings(http_hosts=("git.lab",), ca_file="/etc/ca.pem")
    argv = repos.git_command("http://git.lab/a.git", "main", settings, "/home/ca.pem")
    assert "protocol.http.allow=always" in argv and "http.sslCAInfo=/home/ca.pem" in argv


def test_git_sees_no_system_or_user_configuration(tmp_path):
    env = repos.git_environment(tmp_path)
    assert env["HOME"] == str(tmp_path) and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_TERMINAL_PROMPT"] == "0"
    assert "SSH_AUTH_SOCK" not in env
