"""Prometheus metrics, one registry per app so tests can run several apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# sub-millisecond resolution where the gateway's own cost lives
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, ...], object] = {}
        self.registry = CollectorRegistry()
        # what /metrics shows: this registry, or every worker's pooled (``MetricPool``)
        self.exposition = self.registry
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Governed requests by route and decision",
            ["route", "decision"],
            registry=r,
        )
        self.variant_requests = Counter(
            "gateway_variant_requests_total",
            "Governed requests on routes that split their traffic, by variant and decision",
            ["route", "variant", "decision"],
            registry=r,
        )
        self.passthrough = Counter(
            "gateway_passthrough_requests_total",
            "Requests passed through ungoverned",
            ["route"],
            registry=r,
        )
        self.shed = Counter(
            "gateway_shed_total",
            "Connections and requests refused or closed to protect the gateway",
            ["reason"],
            registry=r,
        )
        self.added_latency = Histogram(
            "gateway_added_latency_seconds",
            "Time spent in the gateway itself per request",
            ["route", "stream"],
            buckets=_FAST,
            registry=r,
        )
        self.policy_time = Histogram(
            "gateway_policy_check_seconds",
            "Check time per policy per request",
            ["policy"],
            buckets=_FAST,
            registry=r,
        )
        self.policy_status = Counter(
            "gateway_policy_results_total",
            "Policy results by status",
            ["policy", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_latency_seconds",
            "Upstream response time (to last byte)",
            ["route"],
            buckets=_SLOW,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures by code",
            ["route", "code"],
            registry=r,
        )
        self.reloads = Counter(
            "gateway_policy_reloads_total",
            "Policy reloads by outcome",
            ["outcome"],
            registry=r,
        )
        self.policy_revision = Gauge(
            "gateway_policy_revision_info",
            "The policy revision being served",
            ["revision"],
            registry=r,
        )
        self.decision_queue = Gauge(
            "gateway_decision_log_queue",
            "Decision records waiting to be written",
            registry=r,
        )
        self.decisions_dropped = Counter(
            "gateway_decision_records_dropped_total",
            "Decision records dropped because the queue was full",
            registry=r,
        )

    def child(self, metric: str, *labels: str):
        """The labelled child of ``metric``, cached: ``labels()`` takes a lock every call."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = getattr(self, metric).labels(*labels)
        return found
