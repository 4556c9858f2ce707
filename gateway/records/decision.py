"""``DecisionRecord``: what the gateway decided about one request, and why.

The proxy builds it once, when the exchange ends, and publishes it on the
event bus. The audit log, incidents, metrics and reviews all read this one
record (OPA's decision logs). Its JSON form is what
``GET /governance/v1/decisions/{id}`` answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """One finding of one policy: a span of a segment, a score and the evidence."""

    segment: str
    start: int
    end: int
    score: float
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "span": [self.start, self.end],
            "score": round(float(self.score), 4),
            "message": self.message,
            "evidence": self.evidence,
            "segment": self.segment,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FindingRecord:
        span = data.get("span") or [0, 0]
        return cls(
            segment=str(data.get("segment", "0")),
            start=int(span[0]),
            end=int(span[1]),
            score=float(data.get("score", 0.0)),
            message=str(data.get("message", "")),
            evidence=dict(data.get("evidence") or {}),
        )


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """One policy's status on one request: ``pass``, ``breach``, ``error``, ``skipped``…"""

    id: str
    kind: str
    mode: str
    status: str
    action: str
    severity: str
    elapsed_ms: float
    findings: tuple[FindingRecord, ...] = ()
    # every finding, including those past the ones kept as evidence
    finding_count: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "mode": self.mode,
            "status": self.status,
            "action": self.action,
            "severity": self.severity,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }
        if self.findings:
            out["findings"] = [f.to_json() for f in self.findings]
            out["finding_count"] = self.finding_count
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicyVerdict:
        findings = tuple(FindingRecord.from_json(f) for f in data.get("findings") or ())
        return cls(
            id=data["id"],
            kind=data.get("kind", ""),
            mode=data.get("mode", "enforce"),
            status=data["status"],
            action=data.get("action", "allow"),
            severity=data.get("severity", "medium"),
            elapsed_ms=float(data.get("elapsed_ms", 0.0)),
            findings=findings,
            finding_count=int(data.get("finding_count", len(findings))),
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at an upstream: the primary, a fallback, or one skipped by containment."""

    route: str
    upstream: str
    status: int | None = None
    error: str | None = None
    # why this attempt was left for the next route (the breached policy ids)
    fell_back: str | None = None
    # the action that caused the fallback
    action: str | None = None
    # "containment" when a switch sent the request past this route unasked
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"route": self.route, "upstream": self.upstream}
        for name in ("status", "error", "fell_back", "action", "skipped"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(
            route=data["route"],
            upstream=data.get("upstream", ""),
            status=data.get("status"),
            error=data.get("error"),
            fell_back=data.get("fell_back"),
            action=data.get("action"),
            skipped=data.get("skipped"),
        )

    @property
    def failed(self) -> bool:
        return bool(self.error) or (self.status or 0) >= 500


@dataclass(frozen=True, slots=True)
class Containment:
    """The containment switch a request was answered under."""

    mode: str
    route: str
    incident_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "route": self.route, "incident_id": self.incident_id}


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision_id: str
    ts: float
    route: str
    upstream: str
    protocol: str
    path: str
    model: str | None
    stream: bool
    revision: str | None
    action: str
    policies: tuple[PolicyVerdict, ...] = ()
    breached: tuple[str, ...] = ()
    chars_released: int = 0
    cut: bool = False
    attempts: tuple[Attempt, ...] = ()
    upstream_status: int | None = None
    added_latency_ms: float = 0.0
    upstream_ms: float = 0.0
    total_ms: float = 0.0
    client_disconnected: bool = False
    # {"code", "message"} of the error the client got, if any
    error: dict[str, str] | None = None
    containment: Containment | None = None
    # the review item a ``review`` action held the answer as
    review_id: str | None = None
    # the route's variant that answered, on a route that splits its traffic
    variant: str | None = None
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema,
            "decision_id": self.decision_id,
            "ts": self.ts,
            "route": self.route,
            "upstream": self.upstream,
            "protocol": self.protocol,
            "path": self.path,
            "model": self.model,
            "stream": self.stream,
            "revision": self.revision,
            "action": self.action,
            "policies": [p.to_json() for p in self.policies],
            "breached": list(self.breached),
            "chars_released": self.chars_released,
            "cut": self.cut,
            "attempts": [a.to_json() for a in self.attempts],
            "upstream_status": self.upstream_status,
            "added_latency_ms": self.added_latency_ms,
            "upstream_ms": self.upstream_ms,
            "total_ms": self.total_ms,
            "client_disconnected": self.client_disconnected,
        }
        if self.error is not None:
            out["error"] = dict(self.error)
        if self.containment is not None:
            out["containment"] = self.containment.to_json()
        if self.review_id is not None:
            out["review_id"] = self.review_id
        if self.variant is not None:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecisionRecord:
        containment = data.get("containment")
        return cls(
            decision_id=data["decision_id"],
            ts=float(data["ts"]),
            route=data.get("route", ""),
            upstream=data.get("upstream", ""),
            protocol=data.get("protocol", ""),
            path=data.get("path", ""),
            model=data.get("model"),
            stream=bool(data.get("stream")),
            revision=data.get("revision"),
            action=data.get("action", ""),
            policies=tuple(PolicyVerdict.from_json(p) for p in data.get("policies") or ()),
            breached=tuple(data.get("breached") or ()),
            chars_released=int(data.get("chars_released") or 0),
            cut=bool(data.get("cut")),
            attempts=tuple(Attempt.from_json(a) for a in data.get("attempts") or ()),
            upstream_status=data.get("upstream_status"),
            added_latency_ms=float(data.get("added_latency_ms") or 0.0),
            upstream_ms=float(data.get("upstream_ms") or 0.0),
            total_ms=float(data.get("total_ms") or 0.0),
            client_disconnected=bool(data.get("client_disconnected")),
            error=data.get("error"),
            containment=Containment(**containment) if containment else None,
            review_id=data.get("review_id"),
            variant=data.get("variant"),
            schema=int(data.get("schema", SCHEMA)),
        )
