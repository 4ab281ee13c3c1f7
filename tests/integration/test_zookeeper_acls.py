"""ZooKeeper ACLs of an environment, against a real ZooKeeper.

Only the cluster's identity (derived from the cluster key) reads and writes the tree; the
frontends' read-only identity reads the routing subtrees and nothing else; an anonymous
client, or one with another cluster's key, gets NoAuth on every read and write. A tree made
before ACLs gets them from the next bootstrap, once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from bismuth_core import layout, operations, tenancy, treeacl
from bismuth_core.credentials import ClusterCredentials, reader_access, writer_access
from bismuth_core.definition import parse_definition
from bismuth_core.errors import AccessDenied
from bismuth_core.secrets import SecretBox, generate_cluster_key, load_cluster_key
from bismuth_core.tokens import Scope
from bismuth_core.zk import ZooKeeper
from tests.support.apiserver import definition
from tests.support.clusterkey import CREDENTIALS, KEY_TEXT

pytestmark = pytest.mark.integration


async def every_path(zk: ZooKeeper, path: str = "/") -> list[str]:
    found = [path]
    for child in await zk.children(path):
        found += await every_path(zk, f"{path.rstrip('/')}/{child}")
    return found


@pytest.fixture
async def populated(zk, standins) -> AsyncIterator[list[str]]:
    """A tree with something under every root: functions, routes, a secret, tenants, tokens,
    a node with a live agent and container statuses, a lock of the API leader's election
    (made by a kazoo recipe: the session's default ACL)."""
    await standins.add()
    tenant, _ = await tenancy.create_tenant(zk, "acme")
    fid = await operations.create_function(zk, parse_definition(definition()), owner=tenant.id)
    box = SecretBox(load_cluster_key(KEY_TEXT))
    await operations.set_secret(zk, fid, "pw", box.seal(fid, "pw", b"v"))
    await tenancy.issue_token(zk, None, Scope.ADMIN)
    election = zk.client.Election(layout.API_LEADER, "test")
    assert await asyncio.to_thread(election.lock.acquire, timeout=5)
    paths = await every_path(zk)
    assert any(p.startswith(layout.API_LEADER + "/") for p in paths)
    yield paths
    await asyncio.to_thread(election.lock.release)


@pytest.fixture
async def anonymous(zk_server, zk_env) -> AsyncIterator[KazooClient]:
    client = KazooClient(hosts=f"{zk_server.hosts}/{zk_env}")
    await asyncio.to_thread(client.start, 10)
    yield client
    await asyncio.to_thread(client.stop)
    await asyncio.to_thread(client.close)


def denied(action: Callable[[], Any]) -> bool:
    try:
        action()
    except NoAuthError:
        return True
    return False


async def test_an_anonymous_client_can_neither_read_nor_write(zk, populated, anonymous):
    paths = populated
    assert len(paths) > 20
    for path in paths:
        assert denied(lambda p=path: anonymous.get(p)), path
        assert denied(lambda p=path: anonymous.get_children(p)), path
        assert denied(lambda p=path: anonymous.set(p, b"x")), path
        assert denied(lambda p=path: anonymous.create(f"{p.rstrip('/')}/intruder")), path
        assert denied(lambda p=path: anonymous.get_acls(p)), path
    for path in paths[1:]:
        assert denied(lambda p=path: anonymous.delete(p, recursive=False)), path
    assert await every_path(zk) == paths  # nothing changed


async def test_another_clusters_key_is_refused(zk_server, zk_env, zk, populated):
    other = ClusterCredentials.from_cluster_key(load_cluster_key(generate_cluster_key()))
    session = ZooKeeper(zk_server.hosts, zk_env, access=writer_access(other))
    await session.start()
    try:
        with pytest.raises(AccessDenied):
            await session.children(layout.FUNCTIONS)
        with pytest.raises(AccessDenied):
            await session.create(layout.route_path("evil.example"), uuid.uuid4().bytes)
    finally:
        await session.stop()


async def test_the_frontends_identity_reads_routes_only_and_writes_nothing(
    zk_server, zk_env, zk, populated
):
    frontend = ZooKeeper(zk_server.hosts, zk_env, access=reader_access(CREDENTIALS.frontend))
    await frontend.start()
    try:
        readable = [p for p in populated if layout.frontend_readable(p)]
        others = [p for p in populated if not layout.frontend_readable(p)]
        assert {layout.FUNCTIONS, layout.NODES, layout.ROUTES} <= set(readable)
        assert {layout.SECRETS, layout.TOKENS, layout.TENANTS, "/"} <= set(others)
        for path in readable:
            await frontend.get(path)
            with pytest.raises(AccessDenied):
                await frontend.set(path, b"x")
            with pytest.raises(AccessDenied):
                await frontend.create(f"{path}/intruder")
        for path in others:
            with pytest.raises(AccessDenied):
                await frontend.get(path)
        with pytest.raises(AccessDenied):
            await frontend.delete(layout.route_path("app.example"))
    finally:
        await frontend.stop()


async def test_a_tree_from_before_acls_gets_them_once(zk_server, zk_env):
    env = zk_env + "old"
    old = ZooKeeper(zk_server.hosts, env)  # as a release before ACLs ran: anonymous
    await old.start()
    try:
        await operations.bootstrap(old)
        await old.create(layout.route_path("old.example"), uuid.uuid4().bytes)
        await old.ensure_path(layout.containers_path("10.0.0.1"))
        await old.create(layout.alive_path("10.0.0.1"), b"{}", ephemeral=True)
        assert (await old.get("/"))[0] != layout.ACL_MARKER
        cluster = ZooKeeper(zk_server.hosts, env, access=writer_access(CREDENTIALS))
        await cluster.start()
        try:
            assert not await treeacl.is_secured(cluster)
            assert await operations.bootstrap(cluster) is True
            assert await treeacl.is_secured(cluster)
            assert await treeacl.secure_tree(cluster) == 0  # nothing left to change
            assert await operations.bootstrap(cluster) is False
            for path in await every_path(cluster):
                assert (await cluster.get_acls(path)) == cluster.acl(path), path
            with pytest.raises(AccessDenied):  # the old, anonymous session is shut out
                await old.get(layout.route_path("old.example"))
        finally:
            await cluster.stop()
    finally:
        await old.stop()


async def test_a_sweep_cut_short_is_done_again(zk_server, zk_env):
    env = zk_env + "cut"
    old = ZooKeeper(zk_server.hosts, env)
    await old.start()
    await operations.bootstrap(old)
    await old.stop()
    cluster = ZooKeeper(zk_server.hosts, env, access=writer_access(CREDENTIALS))
    await cluster.start()
    try:
        await cluster.set_acls("/", cluster.acl("/") or [])  # the root done, then cut short
        assert not await treeacl.is_secured(cluster)  # no mark: not done
        assert await treeacl.secure_tree(cluster) == len(layout.ROOTS)
        assert await treeacl.is_secured(cluster)
    finally:
        await cluster.stop()


async def test_bismuthctl_without_the_cluster_key_is_refused(ctl, zk, populated):
    no_key = ("--cluster-key-file", "")
    refused = await ctl("nodes", *no_key)
    assert refused.code == 6 and "NoAuth" in refused.err and "Traceback" not in refused.err
    bootstrap = await ctl("bootstrap", *no_key)
    assert bootstrap.code == 2 and "needs the cluster key" in bootstrap.err
    assert (await ctl("nodes")).code == 0
