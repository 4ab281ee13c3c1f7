"""The README is the operator manual: its links lead somewhere, its metrics are the real ones.

Anchors are GitHub's: a heading's text, lower-cased, without punctuation, spaces as
hyphens, ``-1``, ``-2``... for repeats. The metrics section lists, per daemon, a table of
``metric | type | labels | meaning``; it must name exactly what the daemons export, with the
same type and labels (read from the daemons' own registries and exposition, not from a copy).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from bismuth_agent.http import AgentMetrics
from bismuth_api.app import ApiMetrics
from bismuth_fe.controller import SyncState
from bismuth_fe.metrics import BUCKETS, ControllerView, exposition

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(#([^)\s]+)\)")


def prose_lines(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.append(base if count == 0 else f"{base}-{count}")
    return out


def test_slugs_follow_github() -> None:
    assert slug("What `make up` brings up") == "what-make-up-brings-up"
    assert slug("Inside a container: the provider") == "inside-a-container-the-provider"
    assert slug("Containers (the agent, `bismuthd`)") == "containers-the-agent-bismuthd"
    assert slug("ZooKeeper's identities") == "zookeepers-identities"
    assert slug("Testing: the lab and pytest-testinfra, not molecule") == (
        "testing-the-lab-and-pytest-testinfra-not-molecule"
    )
    assert slug("`bismuth_fe` and `fe_bind`") == "bismuth_fe-and-fe_bind"
    assert anchors("## A\n```\n## B\n```\n## A\n") == ["a", "a-1"]


def test_every_anchor_link_leads_to_a_heading() -> None:
    text = README.read_text()
    known = set(anchors(text))
    links = [m.group(1) for line in prose_lines(text) for m in LINK.finditer(line)]
    assert len(links) > 20, "the README links its own sections"
    assert sorted({a for a in links if a not in known}) == []


def test_the_contents_list_every_section() -> None:
    """Every ``##`` and ``###`` heading after the contents is listed in them, in order."""
    text = README.read_text()
    lines = list(prose_lines(text))
    start = lines.index("## Contents")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    listed = [m.group(1) for line in lines[start + 1 : end] for m in LINK.finditer(line)]
    wanted = [
        slug(m.group(2))
        for line in lines[end:]
        for m in [HEADING.match(line)]
        if m and len(m.group(1)) in (2, 3)
    ]
    assert listed == wanted


# --- metrics -----------------------------------------------------------------------------


def documented_metrics(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``metric -> (type, labels)`` from the tables of the README's metrics section."""
    lines = list(prose_lines(text))
    start = lines.index("## Metrics")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for line in lines[start:end]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`bismuth_\w+`", cells[0]):
            labels = frozenset(re.findall(r"`(\w+)`", cells[2]))
            assert cells[0].strip("`") not in found, f"{cells[0]} listed twice"
            found[cells[0].strip("`")] = (cells[1], labels)
    return found


def _touch_every_series(metrics: object) -> None:
    """Give each labelled metric one child, so that the exposition shows its labels."""
    for f in fields(metrics):  # type: ignore[arg-type]
        metric = getattr(metrics, f.name)
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))


def exported(exposition_text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``metric -> (type, labels)`` as a scraper sees them (counters with ``_total``)."""
    families = list(text_string_to_metric_families(exposition_text))
    names = {f.name for f in families}
    out = {}
    for family in families:
        if family.name.endswith("_created") and family.name.removesuffix("_created") in names:
            continue  # prometheus_client's creation time of a histogram
        labels = {k for sample in family.samples for k in sample.labels if k != "le"}
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, frozenset(labels))
    return out


def nginx_counters() -> dict[str, float]:
    """One of every kind of key nginx's Lua writes into shared memory (``metrics.lua``)."""
    fid = "0b0e5c9e-4a4b-4e2e-9a4e-1c2d3e4f5a6b"
    raw = {f"requests\t{fid}\t2xx": 3.0, "retries": 1.0, "outstanding\t7": 2.0}
    for kind in ("duration", "upstream"):
        raw.update({f"{kind}\t{fid}\t{i}": 1.0 for i in range(1, len(BUCKETS) + 2)})
        raw.update({f"{kind}_sum\t{fid}": 0.5, f"{kind}_count\t{fid}": len(BUCKETS) + 1.0})
    return raw


def daemon_expositions() -> Iterator[str]:
    for create in (AgentMetrics.create, ApiMetrics.create):
        metrics = create()
        _touch_every_series(metrics)
        yield generate_latest(metrics.registry).decode()  # type: ignore[attr-defined]
    view = ControllerView(True, 1, 1, SyncState(table="t", routes=1, full_syncs=1, deltas=2))
    yield exposition(view, nginx_counters()).decode()


def test_the_metrics_section_lists_what_the_daemons_export() -> None:
    daemons: dict[str, tuple[str, frozenset[str]]] = {}
    for text in daemon_expositions():
        daemons.update(exported(text))
    assert {n.split("_")[1] for n in daemons} == {"agent", "api", "fe"}
    documented = documented_metrics(README.read_text())
    assert sorted(set(daemons) - set(documented)) == [], "exported but not in the README"
    assert sorted(set(documented) - set(daemons)) == [], "in the README but not exported"
    wrong = {n: (documented[n], daemons[n]) for n in daemons if documented[n] != daemons[n]}
    assert wrong == {}, "README (type, labels) vs exported"


def test_the_nginx_counters_above_are_every_kind_lua_writes() -> None:
    """So that the frontend's part of the check above sees every metric nginx feeds."""
    lua = README.parent / "bismuth_fe/lua/bismuth/metrics.lua"
    header = lua.read_text().split("\n\n", 1)[0]
    documented = set(re.findall(r"^--\s{3}(\w+)", header, re.MULTILINE))
    assert "requests" in documented and "outstanding" in documented
    covered = {key.split("\t")[0] for key in nginx_counters()}
    assert documented - covered == set()
