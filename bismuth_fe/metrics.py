"""Prometheus metrics of a frontend: nginx's counters per function, and the controller's state.

nginx counts requests in shared memory (``lua/bismuth/metrics.lua``); at each scrape the
admin app reads them through the control socket and renders them here, next to what the
controller knows (ZooKeeper, its last sync). Nothing is kept between scrapes: counters are
nginx's, so they restart at zero only when nginx does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .controller import SyncState

# Upper bounds of nginx's latency buckets (the same list as in lua/bismuth/metrics.lua).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class ControllerView:
    zookeeper_connected: bool
    routes: int
    serving_backends: int
    sync: SyncState


def exposition(view: ControllerView, nginx: Mapping[str, float] | None) -> bytes:
    """The text format for one scrape; ``nginx`` is None when its socket did not answer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(view, nginx))
    return generate_latest(registry)


class _Snapshot:
    def __init__(self, view: ControllerView, nginx: Mapping[str, float] | None) -> None:
        self.view, self.nginx = view, nginx

    def collect(self) -> Iterator[Metric]:
        yield from _controller_metrics(self.view, self.nginx is not None)
        if self.nginx is not None:
            yield from _nginx_metrics(self.nginx)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _controller_metrics(view: ControllerView, nginx_up: bool) -> Iterator[Metric]:
    sync = view.sync
    yield _gauge(
        "bismuth_fe_zookeeper_connected",
        "1 while the ZooKeeper session is connected",
        1.0 if view.zookeeper_connected else 0.0,
    )
    yield _gauge("bismuth_fe_routes", "Hostnames in the routing table", view.routes)
    yield _gauge(
        "bismuth_fe_serving_backends", "Containers that receive traffic", view.serving_backends
    )
    yield _gauge(
        "bismuth_fe_nginx_up",
        "1 if nginx's control socket answered this scrape",
        1.0 if nginx_up else 0.0,
    )
    yield _gauge(
        "bismuth_fe_nginx_synced",
        "1 while nginx holds the controller's table",
        1.0 if sync.synced else 0.0,
    )
    syncs = CounterMetricFamily(
        "bismuth_fe_nginx_syncs", "Route table pushes into nginx, by kind", labels=["kind"]
    )
    syncs.add_metric(["full"], sync.full_syncs)
    syncs.add_metric(["delta"], sync.deltas)
    yield syncs
    yield CounterMetricFamily(
        "bismuth_fe_nginx_sync_failures",
        "Attempts to reach nginx that failed",
        value=sync.failures,
    )


def _nginx_metrics(raw: Mapping[str, float]) -> Iterator[Metric]:
    parsed = _parse(raw)
    requests = CounterMetricFamily(
        "bismuth_fe_requests",
        "Requests answered, by function and status class",
        labels=["function", "code"],
    )
    for (fid, code), value in sorted(parsed.requests.items()):
        requests.add_metric([fid, code], value)
    yield requests
    yield _histogram(
        "bismuth_fe_request_duration_seconds",
        "Time from a request's first byte to the last byte of its answer",
        parsed.histograms["duration"],
    )
    yield _histogram(
        "bismuth_fe_upstream_latency_seconds",
        "Time from sending a request to a container (or agent) until its response head",
        parsed.histograms["upstream"],
    )
    yield CounterMetricFamily(
        "bismuth_fe_upstream_retries",
        "Requests sent to another container after one could not be reached",
        value=parsed.retries,
    )
    yield _gauge(
        "bismuth_fe_outstanding_requests", "Requests in flight to containers", parsed.outstanding
    )


@dataclass
class _Histogram:
    buckets: list[float]
    total: float = 0.0


@dataclass
class _Parsed:
    requests: dict[tuple[str, str], float]
    histograms: dict[str, dict[str, _Histogram]]
    retries: float = 0.0
    outstanding: float = 0.0


def _parse(raw: Mapping[str, float]) -> _Parsed:
    """nginx's tab-separated keys, grouped (see lua/bismuth/metrics.lua for the list)."""
    out = _Parsed({}, {"duration": {}, "upstream": {}})

    def histogram(kind: str, fid: str) -> _Histogram:
        return out.histograms[kind].setdefault(fid, _Histogram([0.0] * (len(BUCKETS) + 1)))

    for key, value in raw.items():
        parts = key.split("\t")
        kind = parts[0]
        if kind == "requests" and len(parts) == 3:
            out.requests[(parts[1], parts[2])] = value
        elif kind in out.histograms and len(parts) == 3 and parts[2].isdigit():
            index = int(parts[2]) - 1
            if 0 <= index <= len(BUCKETS):
                histogram(kind, parts[1]).buckets[index] += value
        elif kind.removesuffix("_sum") in out.histograms and len(parts) == 2:
            histogram(kind.removesuffix("_sum"), parts[1]).total += value
        elif kind == "retries":
            out.retries += value
        elif kind == "outstanding":
            out.outstanding += value
    return out


def _histogram(name: str, doc: str, per_function: Mapping[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["function"])
    for fid, data in sorted(per_function.items()):
        family.add_metric([fid], _cumulative(data.buckets), data.total)
    return family


def _cumulative(counts: Iterable[float]) -> list[tuple[str, float]]:
    bounds = [*(floatToGoString(b) for b in BUCKETS), "+Inf"]
    running, out = 0.0, []
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        out.append((bound, running))
    return out
