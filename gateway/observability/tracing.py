"""Optional OpenTelemetry tracing of governed requests.

A governed request gets one server span, parented on the client's W3C
``traceparent`` when it sends one, and its context goes on to the upstream in
a fresh ``traceparent``. Each policy's check becomes a child span, built after
the fact from the decision record: live spans around every incremental scan
would cost more than the checks they time.

Tracing is off by default, and then free: this module imports nothing of
OpenTelemetry at load time, ``build_tracer`` imports it only when tracing is
enabled, and the gateway holds ``None`` instead of a tracer, so a request pays
an ``is None`` check and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from gateway.config import Tracing
from gateway.errors import ConfigError
from gateway.records.decision import DecisionRecord

log = logging.getLogger(__name__)

REQUEST_SPAN = "gateway.request"


class RequestTracer:
    """Starts the span of each governed request; owns its own tracer provider.

    The provider is the gateway's own rather than the process-global one, so
    that several gateways in one process (tests, the demo) keep their spans
    apart and the host application's tracing setup is left alone.
    """

    def __init__(self, provider: Any, propagator: Any, trace_api: Any, status: Any) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("gateway")
        self._propagator = propagator
        self._trace = trace_api
        self._status = status
        self._server = trace_api.SpanKind.SERVER

    def begin(self, headers: Mapping[str, str], path: str) -> RequestSpan:
        """The span of a request that just arrived with ``headers``."""
        parent = self._propagator.extract(carrier=headers)
        span = self._tracer.start_span(
            REQUEST_SPAN,
            context=parent,
            kind=self._server,
            attributes={"http.request.method": "POST", "url.path": path},
        )
        return RequestSpan(self, span)

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Export every finished span now (the batch processor exports on its own schedule)."""
        return bool(self._provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._provider.shutdown()


class RequestSpan:
    """The live span of one governed request."""

    __slots__ = ("_owner", "_span", "_context")

    def __init__(self, owner: RequestTracer, span: Any) -> None:
        self._owner = owner
        self._span = span
        self._context = owner._trace.set_span_in_context(span)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Put this request's ``traceparent`` (and ``tracestate``) in the upstream's headers.

        It replaces the client's own: the upstream's parent is the gateway's span.
        """
        self._owner._propagator.inject(headers, context=self._context)

    def abandon(self, reason: str) -> None:
        """End the span as failed when no record could be built for it."""
        status = self._owner._status
        self._span.set_status(status.Status(status.StatusCode.ERROR, reason))
        self._span.end()

    def finish(self, record: DecisionRecord) -> None:
        """Describe the request from its decision record, add the policy spans, and end it."""
        span = self._span
        if not span.is_recording():
            # an unsampled trace: its context went upstream, nothing more is kept
            span.end()
            return
        span.set_attributes(
            {
                "gateway.decision_id": record.decision_id,
                "gateway.route": record.route,
                "gateway.upstream": record.upstream,
                "gateway.protocol": record.protocol,
                "gateway.stream": record.stream,
                "gateway.decision": record.action,
                "gateway.policies.breached": list(record.breached),
                "gateway.added_latency_ms": record.added_latency_ms,
                "gateway.upstream_ms": record.upstream_ms,
                "gateway.attempts": len(record.attempts),
            }
        )
        if record.model:
            span.set_attribute("gen_ai.request.model", record.model)
        if record.upstream_status is not None:
            span.set_attribute("gateway.upstream_status", record.upstream_status)
        status = self._owner._status
        if record.error is not None:
            span.set_attribute("error.type", record.error["code"])
            span.set_status(status.Status(status.StatusCode.ERROR, record.error["message"]))
        end = time.time_ns()
        self._policy_spans(record, end)
        span.end(end_time=end)

    def _policy_spans(self, record: DecisionRecord, end: int) -> None:
        """One child span per policy, laid end to end in the order they were checked.

        The engine measures each policy's total check time, not when each
        check ran, so a span's length is measured and its place is nominal:
        the checks are put just before the request's end, where the check of
        a whole answer happens.
        """
        if not record.policies:
            return
        durations = [round(v.elapsed_ms * 1_000_000) for v in record.policies]
        start = max(end - sum(durations), self._span.start_time or 0)
        tracer = self._owner._tracer
        status = self._owner._status
        for verdict, duration in zip(record.policies, durations, strict=True):
            child = tracer.start_span(
                f"gateway.policy {verdict.id}",
                context=self._context,
                start_time=start,
                attributes={
                    "gateway.policy.id": verdict.id,
                    "gateway.policy.kind": verdict.kind,
                    "gateway.policy.mode": verdict.mode,
                    "gateway.policy.status": verdict.status,
                    "gateway.policy.action": verdict.action,
                    "gateway.policy.elapsed_ms": verdict.elapsed_ms,
                    "gateway.policy.findings": verdict.finding_count,
                },
            )
            if verdict.status == "error":
                child.set_status(status.Status(status.StatusCode.ERROR, verdict.error or ""))
            start = min(start + duration, end)
            child.end(end_time=start)


def build_tracer(config: Tracing, exporter: Any = None) -> RequestTracer:
    """The tracer for ``config``; ``exporter`` replaces the configured one (tests)."""
    # imported here, and only here: a gateway without tracing never loads OpenTelemetry
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import status
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise ConfigError(
            "tracing.enabled needs OpenTelemetry: pip install 'governance-gateway[otel]' "
            f"({exc.name} is missing)"
        ) from None
    if exporter is None:
        exporter = _exporter(config)
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        # a trace the client already samples (or not) keeps that choice
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    # spans are exported from the processor's own thread, never on the event loop
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing on",
        extra={"fields": {"exporter": config.exporter, "sample_ratio": config.sample_ratio}},
    )
    return RequestTracer(provider, TraceContextTextMapPropagator(), trace, status)


def _exporter(config: Tracing) -> Any:
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            "tracing.exporter otlp needs opentelemetry-exporter-otlp-proto-http: "
            f"pip install 'governance-gateway[otel]' ({exc.name} is missing)"
        ) from None
    return OTLPSpanExporter(endpoint=config.endpoint) if config.endpoint else OTLPSpanExporter()
