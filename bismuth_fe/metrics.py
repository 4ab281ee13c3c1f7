"""Prometheus metrics of one frontend, on its own registry (several may share a process).

Counters and the latency histogram are updated by the request path; gauges that describe
state (outstanding requests, ZooKeeper connection, routes) are read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bismuth_fe_requests",
            "Requests answered, by status code class (2xx, 4xx, ...)",
            ["code"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "bismuth_fe_upstream_latency_seconds",
            "Time from sending a request to an agent until its response head arrived",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "bismuth_fe_upstream_retries",
            "Requests sent to another backend after one could not be reached",
            registry=self.registry,
        )
        self.outstanding = Gauge(
            "bismuth_fe_outstanding_requests",
            "Requests in flight to agents",
            registry=self.registry,
        )
        self.zookeeper_connected = Gauge(
            "bismuth_fe_zookeeper_connected",
            "1 while the ZooKeeper session is connected",
            registry=self.registry,
        )
        self.routes = Gauge(
            "bismuth_fe_routes",
            "Hostnames in the routing table",
            registry=self.registry,
        )

    def observe_state(
        self,
        *,
        outstanding: Callable[[], float],
        zookeeper_connected: Callable[[], bool],
        routes: Callable[[], float],
    ) -> None:
        """Read the state gauges from these callables at each scrape."""
        self.outstanding.set_function(outstanding)
        self.zookeeper_connected.set_function(lambda: 1.0 if zookeeper_connected() else 0.0)
        self.routes.set_function(routes)

    def count_response(self, status: int) -> None:
        self.requests.labels(code=f"{status // 100}xx").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
