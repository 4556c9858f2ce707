"""The incident subsystem's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class IncidentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.opened = Counter(
            "gateway_incidents_opened_total", "Incidents opened", ["severity", "source"], registry=r
        )
        self.open = Gauge(
            "gateway_incidents_active", "Incidents not yet resolved", ["severity"], registry=r
        )
        self.events = Counter(
            "gateway_incident_events_total", "Incident timeline events", ["kind"], registry=r
        )
        self.containment = Gauge(
            "gateway_route_containment",
            "1 while a route is contained in this mode",
            ["route", "mode"],
            registry=r,
        )
        self.switches = Counter(
            "gateway_containment_switches_total",
            "Containment switches turned on or off",
            ["route", "mode", "change", "actor"],
            registry=r,
        )
        self.contained_requests = Counter(
            "gateway_contained_requests_total",
            "Requests answered under containment",
            ["route", "mode"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "gateway_incident_outbox_pending", "Incident events waiting for delivery", registry=r
        )
        self.deliveries = Counter(
            "gateway_incident_deliveries_total",
            "Incident event deliveries by outcome",
            ["sink", "outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "gateway_incident_queue_dropped_total",
            "Signals dropped because the incident queue was full",
            registry=r,
        )
