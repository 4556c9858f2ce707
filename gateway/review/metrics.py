"""The review queue's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReviewMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "gateway_review_queue_depth",
            "Review items by state and severity",
            ["state", "severity"],
            registry=registry,
        )
        self.overdue = Gauge(
            "gateway_review_overdue", "Pending review items past their SLA", registry=registry
        )
        self.decision_time = Histogram(
            "gateway_review_time_to_decision_seconds",
            "Time from hold to decision",
            ["outcome"],
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 14400, 86400, 604800),
            registry=registry,
        )
        self.decisions = Counter(
            "gateway_review_decisions_total",
            "Review decisions",
            ["policy", "outcome"],
            registry=registry,
        )
        self.approval_rate = Gauge(
            "gateway_review_approval_rate",
            "Share of a policy's reviewed items that reviewers approved (its false-positive rate)",
            ["policy"],
            registry=registry,
        )
        self.hold_time = Histogram(
            "gateway_review_hold_seconds",
            "Time to store a held response durably",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=registry,
        )
        self.callbacks = Counter(
            "gateway_review_callbacks_total", "Callback deliveries", ["outcome"], registry=registry
        )
        self.escalations = Counter(
            "gateway_review_escalations_total", "Escalations", ["reason"], registry=registry
        )
