"""The frontend's pure parts around nginx: its rendered configuration, the controller's
deltas, routes to the nodes' pools, and nginx's counters as Prometheus metrics."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bismuth_core.credentials import AGENT_HEADER, READER_USER, Digest, FrontendCredentials
from bismuth_fe.config import FrontendConfig
from bismuth_fe.controller import SyncState, plan_delta
from bismuth_fe.metrics import ControllerView, exposition
from bismuth_fe.nginxconf import LUA_DIR, duration, lua_table, render
from bismuth_fe.noderoutes import plan_routes

READER = Digest(READER_USER, "not-used-here")


def route(fid: str, *containers: str) -> dict:
    direct = [{"address": "10.160.0.2", "port": 8000, "container": c} for c in containers]
    return {"function": fid, "direct": direct, "agent": []}


def test_rendered_config_carries_the_settings():
    config = FrontendConfig(
        bind="0.0.0.0:8080",
        run_dir="/run/x",
        temp_dir="/var/x",
        trusted_proxies=("10.0.0.0/8", "2001:db8::/32"),
        max_body_size=1000,
        connect_timeout=0.5,
        retries=3,
        workers=2,
        nginx_user="",
    )
    text = render(config, FrontendCredentials("c2VjcmV0", READER))
    for line in (
        "listen 0.0.0.0:8080 default_server reuseport backlog=4096;",
        "listen unix:/run/x/control.sock;",
        "pid /run/x/nginx.pid;",
        "client_body_temp_path /var/x/body 1 2;",
        "client_max_body_size 1000;",
        "proxy_connect_timeout 500ms;",
        "proxy_next_upstream_tries 4;",
        "10.0.0.0/8 1;",
        "2001:db8::/32 1;",
        "worker_processes 2;",
        f'lua_package_path "{LUA_DIR}/?.lua;;";',
        "proxy_request_buffering off;",
        "proxy_ignore_headers X-Accel-Redirect",
    ):
        assert line in text, line
    # the agents' credential goes to agents only; a client's is dropped on the direct path
    assert text.count(f'proxy_set_header {AGENT_HEADER} "c2VjcmV0";') == 1
    assert text.count(f'proxy_set_header {AGENT_HEADER} "";') == 1
    assert "\nuser " not in text
    defaults = render(FrontendConfig(), FrontendCredentials("x", READER))
    assert "user www-data;" in defaults and "worker_processes auto;" in defaults


def test_a_credential_that_could_break_the_file_is_refused():
    with pytest.raises(ValueError):
        render(FrontendConfig(), FrontendCredentials('x"; include /etc/shadow; "', READER))


def test_lua_settings_and_durations():
    assert lua_table({"a": 1, "b": 0.5, "c": 'x"y'}) == '{a = 1, b = 0.5, c = "x\\"y"}'
    assert (duration(2.0), duration(0.25), duration(0.0001)) == ("2000ms", "250ms", "1ms")


@pytest.mark.parametrize(
    ("pushed", "desired", "changed", "deleted"),
    [
        ({}, {}, {}, []),
        ({}, {"a": route("f", "1")}, {"a": route("f", "1")}, []),
        ({"a": route("f", "1")}, {"a": route("f", "1")}, {}, []),
        ({"a": route("f", "1")}, {"a": route("f", "1", "2")}, {"a": route("f", "1", "2")}, []),
        ({"a": route("f", "1"), "b": route("g")}, {"a": route("f", "1")}, {}, ["b"]),
        ({"b": route("g"), "a": route("f")}, {}, {}, ["a", "b"]),
    ],
)
def test_plan_delta(pushed, desired, changed, deleted):
    assert plan_delta(pushed, desired) == (changed, deleted)


N1, N2, N3 = "10.250.0.11", "10.250.0.12", "10.250.0.13"
P1, P2, P3 = "10.160.176.0/20", "10.160.192.0/20", "10.160.208.0/20"


@pytest.mark.parametrize(
    ("nodes", "pools", "local", "existing", "add", "remove"),
    [
        # live nodes get routes; this host's own node does not
        ({N1, N2}, {N1: P1, N2: P2}, {N1}, {}, {P2: N2}, []),
        # nothing to do when in place
        ({N1, N2}, {N1: P1, N2: P2}, {N1}, {P2: N2}, {}, []),
        # an agent restarting (not alive) keeps its node's route
        ({N1, N2}, {N1: P1}, {N1}, {P2: N2}, {}, []),
        # a deprovisioned node's route goes
        ({N1}, {N1: P1}, {N1}, {P2: N2}, {}, [P2]),
        # a node that announces another pool: the old route goes, the new one comes
        ({N1, N2}, {N2: P3}, set(), {P2: N2}, {P3: N2}, [P2]),
        # a pool that moved to another node
        ({N2, N3}, {N3: P2}, set(), {P2: N2}, {P2: N3}, []),
        # agents without a pool (older versions) get none
        ({N2}, {N2: ""}, set(), {}, {}, []),
    ],
)
def test_plan_routes(nodes, pools, local, existing, add, remove):
    plan = plan_routes(nodes, pools, local, existing)
    assert (plan.add, plan.remove, plan.conflicts) == (add, remove, [])


def test_plan_routes_skips_overlapping_pools():
    plan = plan_routes({N1, N2}, {N1: "10.160.0.0/16", N2: "10.160.16.0/20"}, set(), {})
    assert plan.add == {"10.160.0.0/16": N1}
    assert plan.conflicts == [
        f"pool 10.160.16.0/20 of node {N2} overlaps 10.160.0.0/16 of node {N1}"
    ]


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_nginx_counters_become_metrics_per_function():
    fid = str(uuid.UUID(int=1))
    raw = {
        f"requests\t{fid}\t2xx": 5,
        f"requests\t{fid}\t5xx": 1,
        "requests\t-\t4xx": 2,
        f"duration\t{fid}\t1": 4,  # <= 1 ms
        f"duration\t{fid}\t16": 2,  # over 60 s
        f"duration_sum\t{fid}": 130.5,
        f"duration_count\t{fid}": 6,
        "retries": 3,
        "outstanding\t100": 2,
        "outstanding\t101": 1,
        "junk": 7,
    }
    view = ControllerView(True, 4, 2, SyncState(table="t", routes=4, full_syncs=1, deltas=9))
    got = samples(exposition(view, raw))
    fn = (("function", fid),)
    assert got[("bismuth_fe_requests_total", (("code", "2xx"), *fn))] == 5
    assert got[("bismuth_fe_requests_total", (("code", "4xx"), ("function", "-")))] == 2
    assert got[("bismuth_fe_request_duration_seconds_bucket", (*fn, ("le", "0.001")))] == 4
    assert got[("bismuth_fe_request_duration_seconds_bucket", (*fn, ("le", "60.0")))] == 4
    assert got[("bismuth_fe_request_duration_seconds_bucket", (*fn, ("le", "+Inf")))] == 6
    assert got[("bismuth_fe_request_duration_seconds_count", fn)] == 6
    assert got[("bismuth_fe_request_duration_seconds_sum", fn)] == 130.5
    assert got[("bismuth_fe_upstream_retries_total", ())] == 3
    assert got[("bismuth_fe_outstanding_requests", ())] == 3
    assert got[("bismuth_fe_nginx_syncs_total", (("kind", "delta"),))] == 9
    assert got[("bismuth_fe_nginx_up", ())] == 1
    down = samples(exposition(view, None))
    assert down[("bismuth_fe_nginx_up", ())] == 0
    assert not [k for k in down if k[0] == "bismuth_fe_requests_total"]
