"""The gateway's own metrics: per-shard upstream requests and latency."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPSTREAM_REQUESTS = Counter(
    "medsvc_gateway_upstream_requests_total",
    "Requests the gateway passed to an FE cluster, by shard, service and outcome",
    ["shard", "service", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "medsvc_gateway_upstream_duration_seconds",
    "Time for an FE cluster to answer, by shard and service",
    ["shard", "service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MEMBERS_DOWN = Gauge(
    "medsvc_gateway_members_out_of_rotation",
    "FE servers currently out of rotation after a failure, by shard and service",
    ["shard", "service"],
)
