"""Function secrets through bismuth-api and bismuthctl, against a real ZooKeeper.

Values are sealed with the cluster key before they reach ZooKeeper; the API and bismuthctl
list names only, and deleting a function deletes its secrets in the same multi-op.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bismuth_api.config import ApiConfig
from bismuth_core import consistency, layout, operations
from bismuth_core.config import ConfigError
from bismuth_core.consistency import Kind
from bismuth_core.definition import FunctionDefinition, parse_definition
from bismuth_core.errors import NotFound, SecretUndecryptable
from bismuth_core.secrets import MAX_SECRET_SIZE, SecretBox, generate_cluster_key, load_cluster_key
from bismuth_core.zk import create
from tests.support.apiserver import Api, definition
from tests.support.clusterkey import KEY_TEXT

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("bismuthctl")


@pytest.fixture
def key_text() -> str:
    """The cluster's key: ZooKeeper admits only its holders, so there is no other."""
    return KEY_TEXT


@pytest.fixture
def box(key_text: str) -> SecretBox:
    return SecretBox(load_cluster_key(key_text))


@pytest.fixture
async def keyed(api_config: ApiConfig, key_text: str) -> AsyncIterator[Api]:
    """An API holding the cluster key inline (``key_text``, opened by ``box``)."""
    server = Api(replace(api_config, cluster_key=key_text, cluster_key_file=""))
    await server.start()
    yield server
    await server.stop()


async def call(http, method: str, url: str, raw: bytes | None = None):
    async with http.request(method, url, data=raw) as resp:
        body = await resp.read()
        if not body:
            return resp.status, None
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body


async def new_function(http, api: Api, hostname: str = "app.example") -> str:
    status, body = await call(
        http,
        "POST",
        f"{api.url}/function",
        json.dumps(definition(routes=[{"hostname": hostname}])).encode(),
    )
    assert status == 200, body
    return str(body["id"])


async def test_set_list_replace_delete(keyed, standins, http, caplog):
    await standins.add()
    fid = await new_function(http, keyed)
    base = f"{keyed.url}/function/{fid}/secrets"
    caplog.set_level(logging.DEBUG)
    assert await call(http, "PUT", f"{base}/db.password", b"hunter2-plain") == (204, None)
    assert await call(http, "PUT", f"{base}/API_TOKEN", b"\x00\xffbinary") == (204, None)
    status, listed = await call(http, "GET", base)
    assert (status, listed) == (200, {"secrets": ["API_TOKEN", "db.password"]})
    assert b"hunter2" not in json.dumps(listed).encode()
    assert "hunter2" not in caplog.text  # values are never logged

    assert await call(http, "PUT", f"{base}/db.password", b"rotated") == (204, None)
    assert (await call(http, "GET", base))[1] == {"secrets": ["API_TOKEN", "db.password"]}
    sealed = await operations.read_sealed_secret(standins.zk, uuid.UUID(fid), "db.password")
    assert keyed.deps.secrets.box.open(uuid.UUID(fid), "db.password", sealed) == (b"rotated")

    assert await call(http, "DELETE", f"{base}/db.password") == (204, None)
    assert (await call(http, "GET", base))[1] == {"secrets": ["API_TOKEN"]}
    status, body = await call(http, "DELETE", f"{base}/db.password")
    assert status == 404 and "'db.password'" in body["error"] and fid in body["error"]


async def test_values_in_zookeeper_are_sealed_and_bound_to_the_key(
    keyed, standins, http, box: SecretBox
):
    await standins.add()
    fid = uuid.UUID(await new_function(http, keyed))
    plain = b"correct horse battery staple"
    status, _ = await call(http, "PUT", f"{keyed.url}/function/{fid}/secrets/phrase", plain)
    assert status == 204
    stored, _stat = await standins.zk.get(layout.secret_path(fid, "phrase"))
    assert plain not in stored and len(stored) == 1 + 8 + 12 + len(plain) + 16
    assert box.open(fid, "phrase", stored) == plain  # the same key opens it anywhere
    other = SecretBox(load_cluster_key(generate_cluster_key()))
    with pytest.raises(SecretUndecryptable, match="sealed with another cluster key"):
        other.open(fid, "phrase", stored)


async def test_bad_requests_are_json_errors(keyed, standins, http):
    await standins.add()
    fid = await new_function(http, keyed)
    unknown = uuid.uuid4()
    base = f"{keyed.url}/function/{fid}/secrets"
    cases = [
        ("PUT", f"{keyed.url}/function/not-a-uuid/secrets/a", b"v", 400, "not a UUID"),
        ("GET", f"{keyed.url}/function/not-a-uuid/secrets", None, 400, "not a UUID"),
        ("PUT", f"{base}/.env", b"v", 400, "not starting with '.'"),
        ("PUT", f"{base}/a%20b", b"v", 400, "'a b' is invalid"),
        ("PUT", f"{base}/{'x' * 129}", b"v", 400, "1-128 characters"),
        ("DELETE", f"{base}/.env", None, 400, "not starting with '.'"),
        ("PUT", f"{keyed.url}/function/{unknown}/secrets/a", b"v", 404, str(unknown)),
        ("GET", f"{keyed.url}/function/{unknown}/secrets", None, 404, str(unknown)),
        ("DELETE", f"{keyed.url}/function/{unknown}/secrets/a", None, 404, str(unknown)),
        ("DELETE", f"{base}/never-set", None, 404, "'never-set'"),
        ("PUT", f"{base}/big", b"x" * (MAX_SECRET_SIZE + 1), 413, "limit is 65536 bytes"),
        ("PUT", f"{base}/huge", b"x" * (2 << 20), 413, "limit is 65536 bytes"),
        ("GET", f"{base}/a", None, 405, ""),  # values are never readable through the API
    ]
    for method, url, raw, expected, words in cases:
        status, body = await call(http, method, url, raw)
        assert status == expected, (method, url, body)
        assert isinstance(body, dict) and words in body["error"], (method, url, body)
    assert (await call(http, "GET", base))[1] == {"secrets": []}
    exactly = b"y" * MAX_SECRET_SIZE
    assert await call(http, "PUT", f"{base}/max", exactly) == (204, None)


async def test_secrets_per_function_are_bounded_in_count(api_config, key_text, standins, http):
    server = Api(replace(api_config, cluster_key=key_text, cluster_key_file="", max_secrets=3))
    await server.start()
    try:
        await standins.add()
        fid = await new_function(http, server)
        base = f"{server.url}/function/{fid}/secrets"
        results = await asyncio.gather(
            *(call(http, "PUT", f"{base}/s{i}", b"v") for i in range(6))
        )  # concurrent creators cannot race past the bound
        assert sorted(status for status, _ in results) == [204] * 3 + [409] * 3
        refused = next(body for status, body in results if status == 409)
        assert "has 3 secrets, the most it may have (max_secrets)" in refused["error"]
        (listed,) = [(await call(http, "GET", base))[1]["secrets"]]
        assert len(listed) == 3
        assert await call(http, "PUT", f"{base}/{listed[0]}", b"new") == (204, None)  # replace
        assert await call(http, "DELETE", f"{base}/{listed[0]}") == (204, None)
        assert await call(http, "PUT", f"{base}/again", b"v") == (204, None)
    finally:
        await server.stop()


def test_an_unusable_or_missing_cluster_key_stops_the_api(api_config, tmp_path):
    with pytest.raises(ConfigError, match="config cluster_key_file: required"):
        Api(replace(api_config, cluster_key_file=""))
    with pytest.raises(ConfigError, match="config cluster_key: decodes to 3 bytes"):
        Api(replace(api_config, cluster_key="YWJj", cluster_key_file=""))
    with pytest.raises(ConfigError, match=r"cluster key file .*missing\.key: No such file"):
        Api(replace(api_config, cluster_key_file=str(tmp_path / "missing.key")))
    assert "YWJj" not in repr(replace(api_config, cluster_key="YWJj"))


async def test_deleting_a_function_deletes_its_secrets(keyed, standins, http):
    await standins.add()
    fid = await new_function(http, keyed)
    keep = await new_function(http, keyed, "other.example")
    for target, name in ((fid, "a"), (fid, "b"), (keep, "c")):
        url = f"{keyed.url}/function/{target}/secrets/{name}"
        assert (await call(http, "PUT", url, b"v"))[0] == 204
    status, _ = await call(http, "DELETE", f"{keyed.url}/function/{fid}")
    assert status == 200
    zk = standins.zk
    assert await zk.exists(layout.secrets_path(uuid.UUID(fid))) is None
    assert await zk.children(layout.SECRETS) == [keep]
    assert await consistency.check(zk) == []
    status, body = await call(http, "GET", f"{keyed.url}/function/{fid}/secrets")
    assert status == 404 and fid in body["error"]


async def test_a_secret_set_racing_a_function_delete_is_not_found(zk, interleaved, standins, box):
    await standins.add()
    fid = await operations.create_function(zk, _definition())
    interleaved.before = lambda: operations.delete_function(zk, fid)
    with pytest.raises(NotFound, match=f"function {fid} not found"):
        await operations.set_secret(interleaved, fid, "late", box.seal(fid, "late", b"v"))
    assert await zk.exists(layout.secrets_path(fid)) is None


async def test_a_function_delete_racing_a_secret_set_removes_it_too(zk, interleaved, standins, box):
    await standins.add()
    fid = await operations.create_function(zk, _definition())
    await operations.set_secret(zk, fid, "first", box.seal(fid, "first", b"v"))
    interleaved.before = lambda: operations.set_secret(
        zk, fid, "second", box.seal(fid, "second", b"v")
    )
    await operations.delete_function(interleaved, fid)
    assert await zk.exists(layout.function_path(fid)) is None
    assert await zk.children(layout.SECRETS) == []


def _definition() -> FunctionDefinition:
    return parse_definition(definition(routes=[]))


async def test_orphan_secrets_are_found_and_removed(zk, standins, box):
    await standins.add()
    live = await operations.create_function(zk, _definition())
    await operations.set_secret(zk, live, "kept", box.seal(live, "kept", b"v"))
    gone = uuid.uuid4()
    await zk.commit(
        [
            create(layout.secrets_path(gone)),
            create(layout.secret_path(gone, "x"), box.seal(gone, "x", b"v")),
        ]
    )
    (finding,) = await consistency.check(zk)
    assert (finding.kind, finding.path) == (Kind.ORPHAN_SECRETS, layout.secrets_path(gone))
    report = await consistency.check_and_repair(zk)
    assert report.remaining == () and len(report.repaired) == 1
    assert await zk.children(layout.SECRETS) == [str(live)]


# --- bismuthctl --------------------------------------------------------------------------


async def test_ctl_round_trip(keyed, standins, http, ctl, key_text, box, tmp_path, zk_server):
    await standins.add()
    fid = await new_function(http, keyed)
    key_file = tmp_path / "cluster.key"
    key_file.write_text(key_text + "\n")
    value_file = tmp_path / "value"
    value_file.write_bytes(b"from a file\n")
    keyed_args = ("--cluster-key-file", str(key_file))

    run = await ctl("secret", "set", fid, "from-file", "--from-file", str(value_file), *keyed_args)
    assert run.code == 0 and run.out.strip() == f"secret 'from-file' of function {fid} created"
    run = await ctl("--json", "secret", "set", fid, "inline", "--value", "v1", *keyed_args)
    assert run.code == 0 and json.loads(run.out) == {
        "function": fid,
        "secret": "inline",
        "created": True,
    }
    run = await ctl("secret", "set", fid, "inline", "--value", "v2", *keyed_args)
    assert run.code == 0 and "replaced" in run.out

    # from stdin, through the installed console script
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *("--zookeeper", zk_server.hosts, "--zookeeper-env", keyed.config.zookeeper_env),
        *("secret", "set", fid, "stdin", *keyed_args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(b"\x00from stdin")
    assert proc.returncode == 0, err
    assert out.decode().strip() == f"secret 'stdin' of function {fid} created"

    # what bismuthctl sealed, the API lists and the cluster key opens
    status, listed = await call(http, "GET", f"{keyed.url}/function/{fid}/secrets")
    assert (status, listed) == (200, {"secrets": ["from-file", "inline", "stdin"]})
    expected = {"from-file": b"from a file\n", "inline": b"v2", "stdin": b"\x00from stdin"}
    for name, value in expected.items():
        sealed = await operations.read_sealed_secret(standins.zk, uuid.UUID(fid), name)
        assert box.open(uuid.UUID(fid), name, sealed) == value

    run = await ctl("--json", "secret", "list", fid)
    assert json.loads(run.out) == {"function": fid, "secrets": ["from-file", "inline", "stdin"]}
    run = await ctl("secret", "delete", fid, "inline")
    assert run.code == 0 and "deleted" in run.out
    run = await ctl("secret", "list", fid)
    assert run.code == 0 and run.out.split() == ["from-file", "stdin"]


async def test_ctl_errors_and_exit_codes(keyed, standins, http, ctl, key_text, tmp_path):
    await standins.add()
    fid = await new_function(http, keyed)
    key_file = tmp_path / "cluster.key"
    key_file.write_text(key_text)
    unknown = str(uuid.uuid4())

    no_key = ("--cluster-key-file", "")
    run = await ctl("secret", "set", fid, "a", "--value", "v", *no_key)  # through the API
    assert run.code == 6 and "no API token" in run.err
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("c2hvcnQ=")
    run = await ctl("secret", "set", fid, "a", "--value", "v", "--cluster-key-file", str(bad_key))
    assert run.code == 2 and f"cluster key file {bad_key}: decodes to 5 bytes" in run.err
    keyed_args = ("--cluster-key-file", str(key_file))
    run = await ctl("secret", "set", fid, ".env", "--value", "v", *keyed_args)
    assert run.code == 2 and "not starting with '.'" in run.err
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_SIZE + 1))
    run = await ctl("secret", "set", fid, "a", "--from-file", str(big), *keyed_args)
    assert run.code == 2 and "over the limit of 65536 bytes" in run.err
    run = await ctl("secret", "set", fid, "a", "--from-file", str(tmp_path / "none"), *keyed_args)
    assert run.code == 2 and "cannot read" in run.err
    run = await ctl("secret", "set", fid, "a", "--value", "v", "--from-file", str(big), *keyed_args)
    assert run.code == 2 and "not allowed with argument" in run.err
    run = await ctl("secret", "set", unknown, "a", "--value", "v", *keyed_args)
    assert run.code == 3 and f"function {unknown} not found" in run.err
    run = await ctl("secret", "list", unknown)
    assert run.code == 3
    run = await ctl("secret", "delete", fid, "never-set")
    assert run.code == 3 and "'never-set'" in run.err
    run = await ctl("secret", "list", "not-a-uuid")
    assert run.code == 2 and "is not a function id" in run.err
    assert await standins.zk.children(layout.secrets_path(uuid.UUID(fid))) == []
