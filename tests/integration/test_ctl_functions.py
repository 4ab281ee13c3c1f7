"""``bismuthctl function ...`` and ``secret set`` through a real API with stand-in agents."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("bismuthctl")

YAML = """\
image: bismuth.local/python:3.11
cpu: 500m
memory: 128Mi
svc_quotas: {kv: 1Mi, blob: 10M}
invoke_mode:
  Server: [[/usr/bin/python3, -m, http.server], 8000]
max_instances: 2
routes:
  - hostname: yaml.example
"""

TOML = """\
image = "bismuth.local/python:3.11"
cpu = 0.25
memory = "1Gi"
max_instances = 1
routes = [{hostname = "toml.example"}]

[invoke_mode]
Executable = ["/bin/cat"]
"""

JSON = {
    "image": "bismuth.local/python:3.11",
    "cpu": 1,
    "memory": 67108864,
    "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
    "routes": [{"hostname": "json.example"}],
}


@pytest.fixture
def fctl(ctl, api):
    """``bismuthctl`` aimed at the test's API, as the operator unless a token is given, on a
    machine without the cluster key (so ``secret set`` goes through the API too)."""

    async def run(*args: str, token: str | None = None):
        given = api.admin_token if token is None else token
        api_args = ("--api", api.url, "--cluster-key-file", "")
        return await ctl(*api_args, *(("--token", given) if given else ()), *args)

    return run


@pytest.fixture
def files(tmp_path):
    (tmp_path / "f.yaml").write_text(YAML)
    (tmp_path / "f.toml").write_text(TOML)
    (tmp_path / "f.json").write_text(json.dumps(JSON))
    return tmp_path


async def test_create_from_each_format_converts_units(fctl, standins, files):
    for _ in range(2):
        await standins.add()
    made = {}
    for name in ("f.yaml", "f.toml", "f.json"):
        run = await fctl("--json", "function", "create", str(files / name), "--wait", "10")
        assert run.code == 0, run.err
        made[name] = run.json()["id"]
        assert run.json()["backends"] and all(
            b["status"] == "Running" for b in run.json()["backends"]
        )
    yaml_def = (await fctl("--json", "function", "get", made["f.yaml"])).json()["definition"]
    assert (yaml_def["cpu"], yaml_def["memory"]) == (0.5, 128 << 20)
    assert yaml_def["svc_quotas"] == {"kv": 1 << 20, "blob": 10_000_000}
    assert yaml_def["max_instances"] == 2
    toml_def = (await fctl("--json", "function", "get", "toml.example")).json()["definition"]
    assert (toml_def["cpu"], toml_def["memory"]) == (0.25, 1 << 30)
    assert toml_def["invoke_mode"] == {"Executable": ["/bin/cat"]}

    listing = await fctl("function", "list")
    assert listing.code == 0, listing.err
    lines = listing.out.splitlines()
    assert lines[0].split() == ["ID", "ROUTES", "IMAGE", "CPU", "MEMORY", "RUNNING", "STATUS"]
    row = next(line for line in lines if made["f.yaml"] in line)
    assert row.split()[1:] == [
        "yaml.example",
        "bismuth.local/python:3.11",
        "0.5",
        "128Mi",
        "2/2",
        "Running",
    ]
    as_json = (await fctl("--json", "function", "list")).json()["functions"]
    assert {f["id"] for f in as_json} == set(made.values())


async def test_get_by_id_or_host_shows_replicas_status_and_node(fctl, standins, files):
    agent = await standins.add()
    created = await fctl("function", "create", str(files / "f.toml"), "--wait", "10")
    assert created.code == 0 and "function " in created.out and "Running" in created.out
    fid = created.out.split()[1]
    by_host = await fctl("function", "get", "TOML.example.")
    by_id = await fctl("function", "get", fid)
    assert by_host.code == by_id.code == 0 and by_host.out == by_id.out
    text = by_id.out
    assert f"id:       {fid}" in text and "routes:   toml.example" in text
    assert "memory:   1Gi" in text and "invoke:   Executable: /bin/cat" in text
    assert "replicas: 1/1 running, Running" in text
    header, row = text.splitlines()[-2:]
    assert header.split() == ["NODE", "CONTAINER", "STATUS"]
    node, cid, status = row.split()
    assert (node, status) == (agent.ip, "Running") and uuid.UUID(cid) in agent.known


async def test_update_redeploy_and_delete(fctl, standins, files, api):
    await standins.add()
    fid = (await fctl("--json", "function", "create", str(files / "f.json"))).json()["id"]
    before = (await fctl("--json", "function", "get", fid, "--timeout", "5")).json()
    old = {b["backend"]["container_id"] for b in before["backends"]}

    redeployed = await fctl("--json", "function", "redeploy", "json.example", "--wait", "10")
    assert redeployed.code == 0, redeployed.err
    new = {b["backend"]["container_id"] for b in redeployed.json()["backends"]}
    assert new and not new & old

    bigger = files / "bigger.yaml"
    bigger.write_text(json.dumps({**JSON, "memory": "96Mi"}))
    updated = await fctl("function", "update", fid, str(bigger), "--wait", "10")
    assert updated.code == 0 and "updated" in updated.out, updated.err
    got = (await fctl("--json", "function", "get", fid)).json()
    assert got["definition"]["memory"] == 96 << 20

    deleted = await fctl("function", "delete", "json.example")
    assert deleted.code == 0 and deleted.out.strip() == f"function {fid} deleted"
    gone = await fctl("function", "get", fid)
    assert gone.code == 3 and f"function {fid} not found" in gone.err
    assert (await fctl("function", "delete", "json.example")).code == 3


async def test_logs_plain_json_and_followed(fctl, standins, files, api):
    await standins.add()
    fid = (await fctl("--json", "function", "create", str(files / "f.toml"), "--wait", "10")).json()
    cid = fid["backends"][0]["backend"]["container_id"]
    plain = await fctl("function", "logs", "toml.example")
    assert plain.code == 0 and f"started {cid}" in plain.out and f"==> {cid}" in plain.out
    as_json = await fctl("--json", "function", "logs", fid["id"])
    assert as_json.code == 0
    (entry,) = as_json.json()["containers"]
    assert entry["container_id"] == cid and entry["lines"] == [f"started {cid}"]

    # -f, as the console script: the stream stays open while the container exists...
    follow = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *("--api", api.url, "function", "logs", "-f", "toml.example"),
        env={**os.environ, "BISMUTH_TOKEN": api.admin_token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert follow.stdout is not None
    first = await asyncio.wait_for(follow.stdout.readline(), 10)
    assert first.decode() == f"{cid[:8]} started {cid}\n"
    assert follow.returncode is None
    assert (await fctl("function", "delete", fid["id"])).code == 0
    rest, err = await asyncio.wait_for(follow.communicate(), 10)  # ...and ends with it
    assert (follow.returncode, rest, err) == (0, b"", b"")


async def test_bad_files_and_units_name_the_field_and_create_nothing(fctl, standins, tmp_path):
    await standins.add()
    cases = {
        "unit.yaml": (YAML.replace("128Mi", "12Qi"), "memory: '12Qi' is not a size"),
        "cpu.yaml": (YAML.replace("500m", "lots"), "cpu: 'lots' is not a cpu amount"),
        "quota.yaml": (YAML.replace("kv: 1Mi", "kv: 1.5"), "svc_quotas.kv: 1.5 is not a whole"),
        "half.yaml": (YAML.replace("128Mi", "0.3Ki"), "not a whole number of bytes"),
        "broken.yaml": ("image: [unclosed\n", "not valid YAML"),
        "broken.toml": ("image = \n", "not valid TOML"),
        "broken.json": ("{", "not valid JSON"),
        "list.json": ("[1, 2]", "must be a mapping of fields"),
        "noimage.yaml": (YAML.replace("image: bismuth.local/python:3.11\n", ""), "image"),
        "route.yaml": (YAML.replace("yaml.example", "127.0.0.1"), "routes: hostname"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        run = await fctl("--json", "function", "create", str(tmp_path / name))
        assert run.code == 2, (name, run.err)
        assert message in run.json()["error"] and "Traceback" not in run.err, name
    quoted = (await fctl("function", "create", str(tmp_path / "unit.yaml"))).err
    assert quoted.startswith(f"bismuthctl: error: {tmp_path / 'unit.yaml'}: memory:")
    missing = await fctl("function", "create", str(tmp_path / "none.yaml"))
    assert missing.code == 2 and "cannot read" in missing.err
    assert (await fctl("--json", "function", "list")).json() == {"functions": []}


async def test_unknown_ids_and_hosts(fctl, standins, files):
    await standins.add()
    unknown = str(uuid.uuid4())
    for verb in ("get", "redeploy", "delete", "logs"):
        run = await fctl("function", verb, unknown)
        assert run.code == 3 and f"function {unknown} not found" in run.err, verb
        run = await fctl("function", verb, "nowhere.example")
        assert run.code == 3 and "no function answers 'nowhere.example'" in run.err, verb
    run = await fctl("function", "get", "not a host!")
    assert run.code == 2 and "neither a function id nor a hostname" in run.err


async def test_tokens_wrong_missing_and_tenants_see_their_own(fctl, standins, files, api, zk):
    await standins.add()
    _, acme = await api.tenant("acme")
    _, other = await api.tenant("other")
    fid = (await fctl("--json", "function", "create", str(files / "f.json"), token=acme)).json()
    fid = fid["id"]
    forged = "bth_0123456789abcdef_" + "A" * 43
    for token, message in ((forged, "unknown or revoked token"), ("nonsense", "not a Bismuth")):
        run = await fctl("function", "list", token=token)
        assert run.code == 6 and message in run.err, token
    none = await fctl("function", "list", token="")
    assert none.code == 6 and "no API token" in none.err
    # another tenant: the function does not exist for it, by id or by host
    assert (await fctl("--json", "function", "list", token=other)).json() == {"functions": []}
    assert (await fctl("function", "get", fid, token=other)).code == 3
    assert (await fctl("function", "delete", "json.example", token=other)).code == 3
    listed = (await fctl("--json", "function", "list", token=acme)).json()["functions"]
    assert [f["id"] for f in listed] == [fid]
    admin = (await fctl("--json", "function", "list")).json()["functions"]
    assert [f["id"] for f in admin] == [fid]
    forbidden = await fctl("function", "list", "--tenant", "acme", token=other)
    assert forbidden.code == 6 and "own tenant only" in forbidden.err


async def test_token_from_config_file_env_or_token_file(ctl, api, standins, tmp_path, monkeypatch):
    await standins.add()
    config_dir = tmp_path / "xdg-config" / "bismuth"  # the ctl fixture's XDG_CONFIG_HOME
    config_dir.mkdir(parents=True)
    config = config_dir / "config.toml"
    config.write_text(f'api = "{api.url}"\ntoken = "{api.admin_token}"\n')
    os.chmod(config, 0o644)
    refused = await ctl("function", "list")
    assert refused.code == 2 and f"chmod 600 {config}" in refused.err
    os.chmod(config, 0o600)
    assert (await ctl("function", "list")).out.strip() == "no functions"

    config.write_text(f'api = "{api.url}"\n')
    os.chmod(config, 0o644)  # no token in it: any mode is fine
    monkeypatch.setenv("BISMUTH_TOKEN", api.admin_token)
    assert (await ctl("function", "list")).code == 0
    monkeypatch.delenv("BISMUTH_TOKEN")
    token_file = tmp_path / "admin.token"
    token_file.write_text(api.admin_token + "\n")
    monkeypatch.setenv("BISMUTH_TOKEN_FILE", str(token_file))
    assert (await ctl("function", "list")).code == 0
    unreachable = await ctl("--api", "http://127.0.0.1:9", "function", "list")
    assert unreachable.code == 5 and "cannot reach the API at http://127.0.0.1:9" in unreachable.err


async def test_secret_set_through_the_api(fctl, ctl, standins, files, tmp_path):
    await standins.add()
    value = tmp_path / "value"
    value.write_text("s3cret")
    fid = (await fctl("--json", "function", "create", str(files / "f.json"))).json()["id"]
    run = await fctl("secret", "set", "json.example", "DB", "--from-file", str(value))
    assert (run.code, run.out.strip()) == (0, f"secret 'DB' of function {fid} created")
    run = await fctl("--json", "secret", "set", fid, "DB", "--value", "v2")
    assert run.json() == {"function": fid, "secret": "DB", "created": False}
    assert (await ctl("--json", "secret", "list", fid)).json()["secrets"] == ["DB"]
    run = await fctl("secret", "set", "nowhere.example", "DB", "--value", "v")
    assert run.code == 3 and "no function answers" in run.err
    run = await fctl("secret", "set", fid, ".bad", "--value", "v")
    assert run.code == 2 and "not starting with '.'" in run.err
