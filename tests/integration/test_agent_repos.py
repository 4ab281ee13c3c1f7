"""A function's repo: fetched over https only, unprivileged and bounded, mounted read-only.

The https server is git's http-backend on 127.0.0.1 behind a TLS server with a certificate
authority the test makes (``git_server``); the agent trusts it through ``git_ca_file``.
Refused forms are written the way an older API could have stored them (the policy off), so
the agent's own check is what refuses them.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading

import pytest

from bismuth_agent.cgroups import Cgroup
from bismuth_core import cluster, operations
from bismuth_core.definition import parse_definition
from bismuth_core.layout import ContainerStatus
from tests.support.agenthost import (
    SHELL,
    get,
    httpd,
    run_in,
    running_backend,
    start_agent,
    statuses,
)
from tests.support.gitserver import GIT_ENV, tree_fingerprint
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def repo_agent(node, git_server):
    running = await start_agent(dataclasses.replace(node, git_ca_file=str(git_server.ca_file)))
    yield running
    await running.stop()


def stored(**changes):
    """A definition as an older API could have stored it: no repo or route policy applied."""
    raw = httpd().to_json()
    raw.update(changes)
    return parse_definition(raw, cluster.STORED_LIMITS)


async def failed_with(zk, agent, fid, words: str) -> str:
    (backend,) = (await cluster.read_function(zk, fid)).backends
    seen = {"log": ""}

    async def noted():
        _status, body, _ = await get(f"{agent.url}/logs/{backend.container_id}")
        seen["log"] = body
        if await statuses(zk, fid) != [ContainerStatus.FAILED]:
            return None
        return body if words in body else None

    try:
        return await eventually(noted, timeout=30, what=f"Failed, noting {words!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the container's log: {seen['log'][-2000:]!r}") from None


async def test_https_repo_is_fetched_read_only_and_owned_by_the_container_user(
    zk, repo_agent, git_server
):
    url = git_server.repo("app", {"app.txt": b"from the repo\n", "bin/run.sh": b"echo hi\n"})
    fid = await operations.create_function(zk, httpd(invoke_mode=SHELL, repo=[url, "main"]))
    backend = await eventually(lambda: running_backend(zk, fid), timeout=30, what="Running")
    status, out = await run_in(repo_agent, backend, "cat /repo/app.txt; ls -n /repo/app.txt; pwd")
    assert status == 200, out
    content, listing, cwd = out.splitlines()
    assert content == "from the repo"
    assert listing.split()[2:4] == ["1000", "1000"]
    assert cwd == "/repo"
    script = (
        "exec 2>&1; touch /repo/new; echo x >> /repo/app.txt; "
        "touch /repo/.git/objects/evil; echo done"
    )
    status, out = await run_in(repo_agent, backend, script)
    assert out.count("Read-only file system") == 3, out
    # on the host: a tmpfs owned by the container's own host uid, nothing else in it
    task = await repo_agent.ctrd.tasks.get(str(backend.container_id))
    host_uid = os.stat(f"/proc/{task.pid}").st_uid
    repo_dir = repo_agent.runtime.dir(backend.container_id) / "repo"
    assert os.path.ismount(repo_dir)
    assert os.stat(repo_dir / "app.txt").st_uid == host_uid
    await operations.delete_function(zk, fid)
    await eventually(lambda: not os.path.ismount(repo_dir), timeout=20, what="repo unmounted")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file://{repo}", "only https URLs can be fetched"),
        ("{repo}", "only https URLs can be fetched"),
        ("{repo}/.git", "only https URLs can be fetched"),
        ("ssh://root@127.0.0.1/{repo}", "only https URLs can be fetched"),
        ("git://127.0.0.1/repo.git", "only https URLs can be fetched"),
        ("ext::sh -c touch% /tmp/bismuth-ext-pwned", "only https URLs can be fetched"),
        ("http://127.0.0.1:1/app.git", "only https URLs can be fetched"),
        ("https://root:secret@127.0.0.1/app.git", "must not carry credentials"),
    ],
)
async def test_refused_repo_forms_fail_with_a_log_line_and_touch_nothing(
    zk, repo_agent, tmp_path, url, words
):
    host_repo = tmp_path / "host-repo"
    host_repo.mkdir()
    (host_repo / "secret.txt").write_text("host data\n")
    git = ["git", "-C", str(host_repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, env=GIT_ENV)
    subprocess.run([*git, "add", "-A"], check=True, env=GIT_ENV)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True, env=GIT_ENV)
    before = tree_fingerprint(host_repo)
    definition = stored(invoke_mode=SHELL, repo=[url.format(repo=host_repo), "main"])
    fid = await operations.create_function(zk, definition)
    log = await failed_with(zk, repo_agent, fid, words)
    assert "bismuthd:" in log and "cannot start the container: repo: url" in log
    assert tree_fingerprint(host_repo) == before
    assert not os.path.exists("/tmp/bismuth-ext-pwned")
    assert await repo_agent.ctrd.containers.list() == []


async def test_plain_http_is_fetched_only_from_hosts_the_operator_lists(zk, node):
    running = await start_agent(dataclasses.replace(node, repo_http_hosts=("git.lab.example",)))
    try:
        definition = stored(invoke_mode=SHELL, repo=["http://127.0.0.1:1/app.git", "main"])
        fid = await operations.create_function(zk, definition)
        await failed_with(zk, running, fid, "only https URLs can be fetched")
    finally:
        await running.stop()


async def test_a_repo_over_repo_max_bytes_fails_and_leaves_no_mount(zk, node, git_server):
    config = dataclasses.replace(node, git_ca_file=str(git_server.ca_file), repo_max_bytes=1 << 20)
    running = await start_agent(config)
    try:
        url = git_server.repo("big", {"blob.bin": os.urandom(3 << 20)})
        fid = await operations.create_function(zk, httpd(invoke_mode=SHELL, repo=[url, "main"]))
        log = await failed_with(zk, running, fid, "larger than repo_max_bytes")
        assert f"({1 << 20} bytes)" in log
        (backend,) = (await cluster.read_function(zk, fid)).backends
        assert not os.path.ismount(running.runtime.dir(backend.container_id) / "repo")
    finally:
        await running.stop()


async def test_a_server_that_never_answers_fails_the_fetch_at_repo_timeout(zk, node):
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    running = await start_agent(dataclasses.replace(node, repo_timeout=1.5))
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/app.git"
        fid = await operations.create_function(zk, httpd(invoke_mode=SHELL, repo=[url, "main"]))
        await failed_with(zk, running, fid, "took longer than repo_timeout (1.5s)")
    finally:
        await running.stop()
        listener.close()
        for conn in held:
            conn.close()


async def test_the_repo_counts_against_the_functions_memory(zk, repo_agent, git_server):
    """The clone's tmpfs pages (its pack and its checkout) are charged to the container's own
    cgroup, as /tmp's are."""
    big = git_server.repo("weighty", {"blob.bin": os.urandom(12 << 20)})
    fid = await operations.create_function(
        zk, httpd(invoke_mode=SHELL, memory=96 << 20, repo=[big, "main"])
    )
    backend = await eventually(lambda: running_backend(zk, fid), timeout=60, what="Running")
    cgroup = Cgroup(f"{repo_agent.config.cgroup_root}/{backend.container_id}")
    assert (cgroup.memory_usage() or 0) >= 24 << 20  # 12 MiB packed + 12 MiB checked out
    status, out = await run_in(repo_agent, backend, "wc -c < /repo/blob.bin")
    assert status == 200 and int(out) == 12 << 20


async def test_a_repo_larger_than_the_functions_memory_fails_saying_so(zk, repo_agent, git_server):
    huge = git_server.repo("huge", {"blob.bin": os.urandom(40 << 20)})
    fid = await operations.create_function(
        zk, httpd(invoke_mode=SHELL, memory=24 << 20, repo=[huge, "main"])
    )
    await failed_with(zk, repo_agent, fid, "does not fit in the function's memory")
