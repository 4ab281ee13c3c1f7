"""Function definition validation (DESIGN §4): every rule, the field it names, round trips."""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismuth_core.definition import (
    FIELDS,
    DefinitionLimits,
    ExecutableMode,
    FunctionDefinition,
    Quotas,
    ServerMode,
    normalize_hostname,
    parse_definition,
)
from bismuth_core.errors import InvalidDefinition

MiB = 1 << 20
DIGEST = "sha256:" + "0123456789abcdef" * 4
GROUP = "5f1c7c1e-8a43-4f4e-9d55-0a4a3b2c1d00"
REMOVE = object()


def definition(**changes: Any) -> dict[str, Any]:
    """A valid definition with ``changes`` applied (``REMOVE`` drops a field)."""
    raw: dict[str, Any] = {
        "image": "bismuth.local/python:3.11",
        "repo": None,
        "svc_group_id": None,
        "cpu": 0.5,
        "memory": 128 * MiB,
        "svc_quotas": None,
        "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
        "max_instances": 1,
        "routes": [{"hostname": "app.example"}],
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not REMOVE}


def rejected(raw: object, limits: DefinitionLimits | None = None) -> InvalidDefinition:
    with pytest.raises(InvalidDefinition) as info:
        parse_definition(raw, limits)
    assert info.value.status == 400
    assert info.value.message.startswith(info.value.field + ": ")
    return info.value


def test_parses_the_contract_example() -> None:
    got = parse_definition(definition())
    assert got == FunctionDefinition(
        image="bismuth.local/python:3.11",
        cpu=0.5,
        memory=128 * MiB,
        invoke_mode=ServerMode(("/usr/bin/python3", "-m", "http.server"), 8000),
        max_instances=1,
        routes=("app.example",),
    )
    assert got.to_json() == definition()


def test_optional_fields_default() -> None:
    raw = definition(
        repo=REMOVE, svc_group_id=REMOVE, svc_quotas=REMOVE, max_instances=REMOVE, routes=REMOVE
    )
    got = parse_definition(raw)
    assert (got.repo, got.svc_group_id, got.svc_quotas) == (None, None, None)
    assert (got.max_instances, got.routes) == (1, ())
    assert parse_definition(definition(routes=None)).routes == ()


def test_full_definition_to_json() -> None:
    raw = definition(
        repo=["https://git.example/app.git", "main"],
        svc_group_id=GROUP.upper(),
        svc_quotas={"kv": 1024, "blob": 0},
        invoke_mode={"Executable": ["/bin/ls", "-l"]},
        max_instances=3,
        routes=[{"hostname": "App.Example."}, {"hostname": "www.app.example"}],
        cpu=2,
    )
    got = parse_definition(raw)
    assert got.invoke_mode == ExecutableMode(("/bin/ls", "-l"))
    assert got.svc_quotas == Quotas(kv=1024, blob=0)
    assert got.svc_group_id == uuid.UUID(GROUP)
    assert got.to_json() == {
        **raw,
        "svc_group_id": GROUP,
        "cpu": 2.0,
        "routes": [{"hostname": "app.example"}, {"hostname": "www.app.example"}],
    }


# --- top level ----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, [], "definition", 1, 1.5, True, [definition()]])
def test_definition_must_be_an_object(raw: object) -> None:
    err = rejected(raw)
    assert err.field == "definition"
    assert "must be a JSON object" in err.message


@pytest.mark.parametrize("name", ["image", "cpu", "memory", "invoke_mode"])
@pytest.mark.parametrize("how", ["missing", "null"])
def test_required_fields(name: str, how: str) -> None:
    err = rejected(definition(**{name: REMOVE if how == "missing" else None}))
    assert err.field == name
    assert "is required" in err.message


@pytest.mark.parametrize("name", ["name", "Image", "env", "timeout", ""])
def test_unknown_top_level_field_is_named(name: str) -> None:
    err = rejected(definition(**{name: 1}))
    assert err.field == name
    assert "unknown field" in err.message
    assert "allowed fields are" in err.message


# --- image --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "bismuth.local/python:3.11",
        "localhost:5000/a/b:tag",
        "busybox",
        "busybox:latest",
        "library/busybox",
        f"ghcr.io/x/y@{DIGEST}",
        f"ghcr.io/x/y:v1.2-rc_3@{DIGEST}",
        "registry.example:443/team/app_name/web-server:2024.01.01",
        "a__b/c.d/e---f",
        "10.0.0.1:5000/app",
        "Registry.Example/app",
        "busybox:" + "t" * 128,
        "busybox:_private",
        "a" * 255,
    ],
)
def test_valid_image_references(image: str) -> None:
    assert parse_definition(definition(image=image)).image == image


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("", "non-empty string"),
        (5, "non-empty string"),
        (["busybox"], "non-empty string"),
        ("bismuth.local/Python:3.11", "not a valid image reference"),
        ("BusyBox", "not a valid image reference"),
        ("busy box", "not a valid image reference"),
        (" busybox", "not a valid image reference"),
        ("busybox ", "not a valid image reference"),
        ("busybox\n", "not a valid image reference"),
        ("a:b:c", "not a valid image reference"),
        ("busybox/", "not a valid image reference"),
        ("/busybox", "not a valid image reference"),
        ("busybox:", "not a valid image reference"),
        ("busybox:" + "t" * 129, "not a valid image reference"),
        ("busybox:-tag", "not a valid image reference"),
        ("busybox:ü", "not a valid image reference"),
        ("busybox@sha256:abc", "not a valid image reference"),
        ("busybox@" + DIGEST + "x", "not a valid image reference"),
        ("a..b", "not a valid image reference"),
        ("a-", "not a valid image reference"),
        ("http://registry/app", "not a valid image reference"),
        ("a" * 256, "longer than 255 characters"),
    ],
)
def test_invalid_image_references(image: object, message: str) -> None:
    err = rejected(definition(image=image))
    assert err.field == "image"
    assert message in err.message


# --- cpu, memory, max_instances -----------------------------------------------------


@pytest.mark.parametrize("cpu", [0.001, 0.5, 1, 64, 64.0, 5e-324])
def test_valid_cpu(cpu: float) -> None:
    got = parse_definition(definition(cpu=cpu)).cpu
    assert got == cpu
    assert isinstance(got, float)


@pytest.mark.parametrize(
    ("cpu", "message"),
    [
        (0, "must be in (0, 64]"),
        (0.0, "must be in (0, 64]"),
        (-0.5, "must be in (0, 64]"),
        (64.01, "must be in (0, 64]"),
        (10**6, "must be in (0, 64]"),
        (True, "must be a number"),
        (False, "must be a number"),
        ("0.5", "must be a number"),
        ([0.5], "must be a number"),
        ({"cores": 1}, "must be a number"),
        (math.nan, "must be a finite number"),
        (math.inf, "must be a finite number"),
        (-math.inf, "must be a finite number"),
        pytest.param(10**400, "must be a finite number", id="int-beyond-float"),
    ],
)
def test_invalid_cpu(cpu: object, message: str) -> None:
    err = rejected(definition(cpu=cpu))
    assert err.field == "cpu"
    assert message in err.message


def test_cpu_bound_follows_the_limits() -> None:
    limits = DefinitionLimits(cpu_max=2.0)
    assert parse_definition(definition(cpu=2), limits).cpu == 2.0
    err = rejected(definition(cpu=2.5), limits)
    assert "must be in (0, 2]" in err.message and "got 2.5" in err.message


@pytest.mark.parametrize("memory", [4 * MiB, 4 * MiB + 1, 1 << 40])
def test_valid_memory(memory: int) -> None:
    assert parse_definition(definition(memory=memory)).memory == memory


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        (4 * MiB - 1, "at least 4194304 bytes (4 MiB)"),
        (0, "at least 4194304 bytes"),
        (-(1 << 30), "at least 4194304 bytes"),
        (float(128 * MiB), "must be an integer number of bytes"),
        (128.5 * MiB, "must be an integer number of bytes"),
        (True, "must be an integer number of bytes"),
        ("134217728", "must be an integer number of bytes"),
        (math.inf, "must be an integer number of bytes"),
    ],
)
def test_invalid_memory(memory: object, message: str) -> None:
    err = rejected(definition(memory=memory))
    assert err.field == "memory"
    assert message in err.message


def test_memory_bound_follows_the_limits() -> None:
    limits = DefinitionLimits(memory_max=256 * MiB)
    assert parse_definition(definition(memory=256 * MiB), limits).memory == 256 * MiB
    err = rejected(definition(memory=256 * MiB + 1), limits)
    assert err.field == "memory" and "at most 268435456 bytes" in err.message


@pytest.mark.parametrize("count", [1, 2, 64])
def test_valid_max_instances(count: int) -> None:
    assert parse_definition(definition(max_instances=count)).max_instances == count


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (0, "between 1 and 64, got 0"),
        (-1, "between 1 and 64, got -1"),
        (65, "between 1 and 64, got 65"),
        (1.0, "must be an integer"),
        (True, "must be an integer"),
        ("2", "must be an integer"),
    ],
)
def test_invalid_max_instances(count: object, message: str) -> None:
    err = rejected(definition(max_instances=count))
    assert err.field == "max_instances"
    assert message in err.message


def test_max_instances_bound_follows_the_limits() -> None:
    limits = DefinitionLimits(max_instances=3)
    assert parse_definition(definition(max_instances=3), limits).max_instances == 3
    assert "between 1 and 3, got 4" in rejected(definition(max_instances=4), limits).message


# --- routes -------------------------------------------------------------------------

LABEL63 = "a" * 63
HOST253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


@pytest.mark.parametrize(
    ("hostname", "canonical"),
    [
        ("app.example", "app.example"),
        ("App.EXAMPLE", "app.example"),
        ("app.example.", "app.example"),
        ("a", "a"),
        ("hello.bismuth.local", "hello.bismuth.local"),
        ("1.2.3.example", "1.2.3.example"),
        ("app.123a", "app.123a"),
        ("localhost.example", "localhost.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b--c.example", "a-b--c.example"),
        (LABEL63 + ".example", LABEL63 + ".example"),
        (HOST253, HOST253),
        (HOST253 + ".", HOST253),
    ],
)
def test_valid_hostnames_are_canonical(hostname: str, canonical: str) -> None:
    routes = [{"hostname": hostname}]
    assert parse_definition(definition(routes=routes)).routes == (canonical,)
    assert normalize_hostname(hostname) == canonical


@pytest.mark.parametrize(
    ("hostname", "message"),
    [
        ("", "non-empty string"),
        (None, "non-empty string"),
        (42, "non-empty string"),
        ("a" * 64 + ".example", "not valid per RFC 1123"),
        (HOST253 + "d", "longer than 253 characters"),
        ("-app.example", "not valid per RFC 1123"),
        ("app-.example", "not valid per RFC 1123"),
        ("app.-example", "not valid per RFC 1123"),
        ("app..example", "not valid per RFC 1123"),
        (".app.example", "not valid per RFC 1123"),
        (".", "not valid per RFC 1123"),
        ("app.example..", "not valid per RFC 1123"),
        ("app_x.example", "not valid per RFC 1123"),
        ("app example", "not valid per RFC 1123"),
        ("app.example\n", "not valid per RFC 1123"),
        ("app.example:8000", "not valid per RFC 1123"),
        ("app/x.example", "not valid per RFC 1123"),
        ("*.example", "not valid per RFC 1123"),
        ("bücher.example", "must be ASCII"),
        ("\u212aelvin.example", "must be ASCII"),  # KELVIN SIGN lowercases to "k"
    ],
)
def test_invalid_hostnames(hostname: object, message: str) -> None:
    err = rejected(definition(routes=[{"hostname": hostname}]))
    assert err.field == "routes"
    assert message in err.message
    with pytest.raises(InvalidDefinition):
        normalize_hostname(hostname)


@pytest.mark.parametrize(
    ("hostname", "message"),
    [
        ("127.0.0.1", "hostname '127.0.0.1' is an IP address; routes must be DNS names"),
        ("10.0.0.1.", "is an IP address"),
        ("1.2.3", "is an IP address"),
        ("2130706433", "is an IP address"),
        ("0x7f000001", "is an IP address"),
        ("0X7F.0.0.0x1", "is an IP address"),
        ("app.example.0", "is an IP address"),
        ("localhost", "names this machine (localhost)"),
        ("LocalHost.", "names this machine (localhost)"),
        ("app.localhost", "names this machine (localhost)"),
    ],
)
def test_routes_must_be_dns_names(hostname: str, message: str) -> None:
    err = rejected(definition(routes=[{"hostname": hostname}]))
    assert err.field == "routes"
    assert message in err.message


def test_normalize_hostname_names_the_callers_field() -> None:
    with pytest.raises(InvalidDefinition) as info:
        normalize_hostname("bad_host", field_name="host")
    assert info.value.field == "host"


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([{"hostname": "a.example"}, {"hostname": "A.example."}], "'a.example' is listed twice"),
        ([{"hostname": "a.example"}, {"hostname": "a.example"}], "listed twice"),
        (["app.example"], 'each route must be {"hostname": "<name>"}'),
        ([{"host": "app.example"}], "each route must be"),
        ([{"hostname": "app.example", "port": 80}], "each route must be"),
        ([{}], "each route must be"),
        ([None], "each route must be"),
        ({"hostname": "app.example"}, "must be a list"),
        ("app.example", "must be a list"),
        (False, "must be a list"),
        (0, "must be a list"),
        ({}, "must be a list"),
        ([{"hostname": f"h{i}.example"} for i in range(65)], "at most 64 routes"),
    ],
)
def test_invalid_routes(routes: object, message: str) -> None:
    err = rejected(definition(routes=routes))
    assert err.field == "routes"
    assert message in err.message


def test_64_routes_are_allowed() -> None:
    routes = [{"hostname": f"h{i}.example"} for i in range(64)]
    assert len(parse_definition(definition(routes=routes)).routes) == 64


# --- repo ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example/team/app.git",
        "HTTPS://git.example/team/app.git",
        "https://git.example:8443/app",
        "https://10.0.0.1/app.git",
    ],
)
def test_allowed_repo_urls(url: str) -> None:
    assert parse_definition(definition(repo=[url, "main"])).repo == (url, "main")


ONLY_HTTPS = "only https URLs can be fetched"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://git.example/app.git", ONLY_HTTPS),
        ("git://git.example/app.git", ONLY_HTTPS),
        ("ssh://git@git.example:2222/app.git", ONLY_HTTPS),
        ("file:///srv/git/app.git", ONLY_HTTPS),
        ("/srv/git/app.git", ONLY_HTTPS),
        ("/root/.ssh", ONLY_HTTPS),
        ("ftp://git.example/app.git", ONLY_HTTPS),
        ("javascript:alert(1)", ONLY_HTTPS),
        ("git.example/app.git", ONLY_HTTPS),
        ("./app.git", ONLY_HTTPS),
        ("git@git.example:team/app.git", ONLY_HTTPS),
        ("-oProxyCommand=evil", ONLY_HTTPS),
        ("ext::sh -c evil", ONLY_HTTPS),
        ("https::git.example/app.git", "names no host"),
        ("https:///app.git", "names no host"),
        ("https://user@git.example/app.git", "must not carry credentials"),
        ("https://user:secret@git.example/app.git", "must not carry credentials"),
        ("https://:secret@git.example/app.git", "must not carry credentials"),
        ("https://[::1", "is not a valid URL"),
        ("https://git.example:99999/app.git", "is not a valid URL"),
        ("https://a\uff03b/app.git", "is not a valid URL"),
        ("https://git.example/app\n.git", "at most 2048 printable characters"),
        ("https://git.example/\x00", "at most 2048 printable characters"),
        ("https://git.example/" + "a" * 2029, "at most 2048 printable characters"),
    ],
)
def test_rejected_repo_urls(url: str, message: str) -> None:
    err = rejected(definition(repo=[url, "main"]))
    assert err.field == "repo"
    assert message in err.message


def test_refused_url_names_the_rule_and_what_is_refused() -> None:
    err = rejected(definition(repo=["file:///srv/git/app.git", "main"]))
    assert err.message == (
        "repo: url 'file:///srv/git/app.git' is not allowed: only https URLs can be fetched "
        "(plain http only to the hosts listed in repo_http_hosts); local paths, file, ssh, "
        "git, ext and other transports are refused"
    )


def test_plain_http_only_to_hosts_the_operator_lists() -> None:
    limits = DefinitionLimits(repo_http_hosts=("git.lab", "10.0.0.5:3000"))
    for url in ("http://git.lab/a.git", "http://GIT.lab:8080/a.git", "http://10.0.0.5:3000/a"):
        assert parse_definition(definition(repo=[url, "main"]), limits).repo
    for url in ("http://10.0.0.5/a", "http://10.0.0.5:3001/a", "http://other.lab/a"):
        assert ONLY_HTTPS in rejected(definition(repo=[url, "main"]), limits).message
    err = rejected(definition(repo=["http://me@git.lab/a.git", "main"]), limits)
    assert "credentials" in err.message


def test_stored_definitions_are_read_as_they_were_written() -> None:
    """Definitions an older API stored still parse: the agent refuses their repo itself."""
    stored = DefinitionLimits(enforce_policy=False)
    raw = definition(repo=["/srv/git/app.git", "main"], routes=[{"hostname": "127.0.0.1"}])
    got = parse_definition(raw, stored)
    assert got.repo == ("/srv/git/app.git", "main")
    assert got.routes == ("127.0.0.1",)


@pytest.mark.parametrize(
    "repo",
    [
        "https://git.example/app.git",
        ["https://git.example/app.git"],
        ["https://git.example/app.git", "main", "extra"],
        ["https://git.example/app.git", ""],
        ["", "main"],
        ["https://git.example/app.git", 1],
        [None, "main"],
        {"url": "https://git.example/app.git", "branch": "main"},
        [],
    ],
)
def test_repo_shape(repo: object) -> None:
    err = rejected(definition(repo=repo))
    assert err.field == "repo"
    assert "must be null or [url, branch] of non-empty strings" in err.message


@pytest.mark.parametrize(
    "branch",
    ["main", "feature/x", "release-1.2", "v1.0_rc", "a.b", "user/feat/deep", "x" * 255, "ü"],
)
def test_valid_branches(branch: str) -> None:
    assert parse_definition(definition(repo=["https://g.example/a", branch])).repo == (
        "https://g.example/a",
        branch,
    )


@pytest.mark.parametrize(
    "branch",
    [
        "a..b",
        "-x",
        "/x",
        "x/",
        "x.",
        "x.lock",
        "a.lock/b",
        ".hidden",
        "a/.hidden",
        "a//b",
        "a@{b",
        "@",
        "a b",
        "a\tb",
        "a~b",
        "a^b",
        "a:b",
        "a?b",
        "a*b",
        "a[b",
        "a\\b",
        "a\x7fb",
        "main\n",
        "x" * 256,
    ],
)
def test_invalid_branches(branch: str) -> None:
    err = rejected(definition(repo=["https://g.example/a", branch]))
    assert err.field == "repo"
    assert "is not a valid git ref name" in err.message


# --- svc_group_id and svc_quotas ----------------------------------------------------


@pytest.mark.parametrize("group", [GROUP, GROUP.upper(), str(uuid.UUID(int=0))])
def test_valid_group(group: str) -> None:
    assert parse_definition(definition(svc_group_id=group)).svc_group_id == uuid.UUID(group)


@pytest.mark.parametrize("group", ["", "not-a-uuid", GROUP[:-1], 12345, [GROUP], {"id": GROUP}])
def test_invalid_group(group: object) -> None:
    err = rejected(definition(svc_group_id=group))
    assert err.field == "svc_group_id"
    assert "must be null or a UUID string" in err.message


@pytest.mark.parametrize(
    ("quotas", "expected"),
    [
        (None, None),
        ({}, Quotas()),
        ({"kv": 0}, Quotas(kv=0)),
        ({"kv": 1 << 20, "blob": 10 << 20}, Quotas(kv=1 << 20, blob=10 << 20)),
        ({"kv": None, "blob": 5}, Quotas(blob=5)),
    ],
)
def test_valid_quotas(quotas: object, expected: Quotas | None) -> None:
    assert parse_definition(definition(svc_quotas=quotas)).svc_quotas == expected


@pytest.mark.parametrize(
    ("quotas", "field", "message"),
    [
        ({"kv": -1}, "svc_quotas.kv", "must be a non-negative integer"),
        ({"blob": 1.5}, "svc_quotas.blob", "must be a non-negative integer"),
        ({"blob": 1024.0}, "svc_quotas.blob", "must be a non-negative integer"),
        ({"kv": True}, "svc_quotas.kv", "must be a non-negative integer"),
        ({"kv": "1024"}, "svc_quotas.kv", "must be a non-negative integer"),
        ({"kv": [1]}, "svc_quotas.kv", "must be a non-negative integer"),
        ({"disk": 1}, "svc_quotas.disk", "unknown quota; use kv or blob"),
        ({"kv": 1, "secrets": 1}, "svc_quotas.secrets", "unknown quota"),
        ([1, 2], "svc_quotas", 'must be null or {"kv": bytes, "blob": bytes}'),
        (1024, "svc_quotas", "must be null or"),
        ("kv", "svc_quotas", "must be null or"),
    ],
)
def test_invalid_quotas(quotas: object, field: str, message: str) -> None:
    err = rejected(definition(svc_quotas=quotas))
    assert err.field == field
    assert message in err.message


# --- invoke_mode --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ({"Server": [["/usr/bin/python3"], 8000]}, ServerMode(("/usr/bin/python3",), 8000)),
        ({"Server": [["srv", ""], 1]}, ServerMode(("srv", ""), 1)),
        ({"Server": [["srv"], 65535]}, ServerMode(("srv",), 65535)),
        ({"Executable": ["/bin/ls"]}, ExecutableMode(("/bin/ls",))),
        ({"Executable": ["/bin/echo", "a b", ""]}, ExecutableMode(("/bin/echo", "a b", ""))),
        ({"Executable": ["x"] * 256}, ExecutableMode(("x",) * 256)),
        ({"Executable": ["x" * 4096]}, ExecutableMode(("x" * 4096,))),
    ],
)
def test_valid_invoke_modes(mode: dict[str, Any], expected: object) -> None:
    got = parse_definition(definition(invoke_mode=mode)).invoke_mode
    assert got == expected
    assert got.to_json() == mode


@pytest.mark.parametrize(
    ("mode", "field", "message"),
    [
        ("Server", "invoke_mode", 'must be {"Server": [command, port]} or {"Executable"'),
        (["/bin/ls"], "invoke_mode", "must be {"),
        ({}, "invoke_mode", "must be {"),
        (
            {"Server": [["/bin/srv"], 80], "Executable": ["/bin/ls"]},
            "invoke_mode",
            "must be {",
        ),
        ({"Lambda": ["/bin/ls"]}, "invoke_mode", "unknown mode 'Lambda'"),
        ({"server": [["/bin/srv"], 80]}, "invoke_mode", "unknown mode 'server'"),
        ({"Server": "/bin/srv"}, "invoke_mode.Server", "must be [command, port]"),
        ({"Server": [["/bin/srv"]]}, "invoke_mode.Server", "must be [command, port]"),
        ({"Server": [["/bin/srv"], 80, 1]}, "invoke_mode.Server", "must be [command, port]"),
        ({"Server": {"argv": ["/bin/srv"], "port": 80}}, "invoke_mode.Server", "must be ["),
        ({"Server": [[], 80]}, "invoke_mode.Server", "non-empty list of strings"),
        ({"Server": ["/bin/srv", 80]}, "invoke_mode.Server", "non-empty list of strings"),
        ({"Server": [[""], 80]}, "invoke_mode.Server", "program must not be empty"),
        ({"Server": [["/bin/srv", 1], 80]}, "invoke_mode.Server", "strings without NUL"),
        ({"Server": [["/bin/s\x00rv"], 80]}, "invoke_mode.Server", "strings without NUL"),
        ({"Server": [["/bin/srv"], 0]}, "invoke_mode.Server", "port must be an integer in"),
        ({"Server": [["/bin/srv"], 65536]}, "invoke_mode.Server", "port must be an integer"),
        ({"Server": [["/bin/srv"], -80]}, "invoke_mode.Server", "port must be an integer"),
        ({"Server": [["/bin/srv"], "8000"]}, "invoke_mode.Server", "port must be an integer"),
        ({"Server": [["/bin/srv"], 8000.0]}, "invoke_mode.Server", "port must be an integer"),
        ({"Server": [["/bin/srv"], True]}, "invoke_mode.Server", "port must be an integer"),
        ({"Server": [["/bin/srv"], None]}, "invoke_mode.Server", "port must be an integer"),
        ({"Executable": []}, "invoke_mode.Executable", "non-empty list of strings"),
        ({"Executable": "/bin/ls"}, "invoke_mode.Executable", "non-empty list of strings"),
        ({"Executable": None}, "invoke_mode.Executable", "non-empty list of strings"),
        ({"Executable": [["/bin/ls"]]}, "invoke_mode.Executable", "strings without NUL"),
        ({"Executable": [None]}, "invoke_mode.Executable", "strings without NUL"),
        ({"Executable": [""]}, "invoke_mode.Executable", "program must not be empty"),
        ({"Executable": ["x"] * 257}, "invoke_mode.Executable", "more than 256 arguments"),
        ({"Executable": ["x" * 4097]}, "invoke_mode.Executable", "of at most 4096 characters"),
    ],
)
def test_invalid_invoke_modes(mode: object, field: str, message: str) -> None:
    err = rejected(definition(invoke_mode=mode))
    assert err.field == field
    assert message in err.message


# --- properties ---------------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


def _numeric(label: str) -> bool:
    """A last label that makes a name an IP address to a URL parser (decimal or hex)."""
    return label.isdigit() or re.fullmatch(r"0x[0-9a-f]*", label) is not None


hostnames = (
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not _numeric(h.rsplit(".", 1)[-1]) and "localhost" not in h)
)
path_components = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+){0,2}", fullmatch=True)
images = st.builds(
    lambda domain, path, tag, digest: domain + "/".join(path) + tag + digest,
    st.sampled_from(["", "localhost:5000/", "ghcr.io/", "bismuth.local/", "r.example:443/"]),
    st.lists(path_components, min_size=1, max_size=3),
    st.just("") | st.from_regex(r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    st.just("") | st.from_regex(r"@sha256:[0-9a-f]{64}", fullmatch=True),
)
argv = st.lists(
    st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=12),
    min_size=1,
    max_size=5,
).filter(lambda a: a[0] != "")
modes = st.one_of(
    st.builds(lambda a, p: {"Server": [a, p]}, argv, st.integers(1, 65535)),
    st.builds(lambda a: {"Executable": a}, argv),
)
branches = st.from_regex(r"[a-z0-9]+(?:[/_-][a-z0-9]+){0,3}", fullmatch=True)
urls = st.builds(
    lambda prefix, path: prefix + path,
    st.sampled_from(["https://g.example/", "https://10.0.0.1/", "https://h:8443/"]),
    st.from_regex(r"[a-z0-9]{1,10}(?:\.git)?", fullmatch=True),
)
quota = st.none() | st.integers(min_value=0, max_value=2**40)
valid_definitions = st.fixed_dictionaries(
    {
        "image": images,
        "cpu": st.floats(min_value=0, max_value=64, exclude_min=True) | st.integers(1, 64),
        "memory": st.integers(min_value=4 * MiB, max_value=1 << 40),
        "invoke_mode": modes,
    },
    optional={
        "repo": st.none() | st.tuples(urls, branches).map(list),
        "svc_group_id": st.none() | st.uuids().map(str),
        "svc_quotas": st.none() | st.fixed_dictionaries({}, optional={"kv": quota, "blob": quota}),
        "max_instances": st.integers(1, 64),
        "routes": st.none()
        | st.lists(hostnames, max_size=4, unique=True).map(
            lambda hs: [{"hostname": h} for h in hs]
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(valid_definitions)
def test_to_json_parses_back_to_an_equal_definition(raw: dict[str, Any]) -> None:
    parsed = parse_definition(raw)
    stored = json.loads(json.dumps(parsed.to_json()))
    assert set(stored) == set(FIELDS)
    again = parse_definition(stored)
    assert again == parsed
    assert again.to_json() == stored


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 4 * MiB, 65535, 65536])
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELDS), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_as_a_definition_is_rejected_cleanly(value: object) -> None:
    try:
        got = parse_definition(value)
    except InvalidDefinition as exc:
        known = exc.field == "definition" or exc.field.split(".")[0] in FIELDS
        assert known or "unknown field" in exc.message
    else:
        assert isinstance(got, FunctionDefinition)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_any_json_in_one_field_names_that_field(name: str, value: object) -> None:
    try:
        parse_definition(definition(**{name: value}))
    except InvalidDefinition as exc:
        assert exc.field.split(".")[0] == name
        assert exc.to_json() == {"error": exc.message, "field": exc.field}


nested_shapes = st.one_of(
    st.builds(lambda v: {"invoke_mode": {"Server": v}}, json_values),
    st.builds(lambda v, p: {"invoke_mode": {"Server": [v, p]}}, json_values, json_values),
    st.builds(lambda v: {"invoke_mode": {"Executable": v}}, json_values),
    st.builds(lambda v: {"invoke_mode": {"Executable": ["/bin/x", v]}}, json_values),
    st.builds(lambda v: {"routes": [{"hostname": v}]}, json_values),
    st.builds(lambda v: {"routes": [v]}, json_values),
    st.builds(lambda u, b: {"repo": [u, b]}, json_values | st.text(), json_values | st.text()),
    st.builds(lambda k, v: {"svc_quotas": {k: v}}, st.sampled_from(["kv", "blob"]), json_values),
)


@settings(max_examples=300, deadline=None)
@given(nested_shapes)
def test_any_json_inside_a_field_names_that_field(changes: dict[str, Any]) -> None:
    (name,) = changes
    try:
        parse_definition(definition(**changes))
    except InvalidDefinition as exc:
        assert exc.field.split(".")[0] == name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_hostname_is_canonical_or_rejected(text: str) -> None:
    try:
        host = normalize_hostname(text)
    except InvalidDefinition as exc:
        assert exc.field == "routes"
        return
    assert host == text.lower().removesuffix(".")
    assert host.isascii() and len(host) <= 253
    assert all(1 <= len(label) <= 63 for label in host.split("."))
    assert normalize_hostname(host) == host
