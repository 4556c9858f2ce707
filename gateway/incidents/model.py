"""The incident record, its states and the rows it is stored as."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

STATES = ("open", "acknowledged", "contained", "resolved", "postmortem_done")
ACTIVE_STATES = ("open", "acknowledged", "contained")

# allowed moves; anything else is a conflict the API reports
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("acknowledged", "contained", "resolved"),
    "acknowledged": ("contained", "resolved"),
    "contained": ("resolved",),
    "resolved": ("postmortem_done",),
    "postmortem_done": (),
}

# per-minute breach counts kept for the chart; older buckets are dropped
BUCKET_SECONDS = 60
MAX_BUCKETS = 24 * 60


def new_incident_id() -> str:
    return "inc-" + uuid.uuid4().hex[:16]


@dataclass
class Incident:
    id: str
    dedup_key: str
    title: str
    severity: str
    state: str
    source: str
    rule_id: str | None
    route: str | None
    upstream: str | None
    policy: str | None
    opened_at: float
    first_seen: float
    last_seen: float
    resolved_at: float | None = None
    breach_count: int = 0
    # requests (decision ids) that contributed, counted once each
    requests: int = 0
    by_policy: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)
    chars_released: int = 0
    cuts: int = 0
    buckets: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    review_items: list[str] = field(default_factory=list)
    monitor: dict[str, Any] | None = None
    acknowledged_at: float | None = None
    contained_at: float | None = None
    auto_resolve_after: float | None = None
    resolve_on_clear: bool = False
    next_seq: int = 1
    # sinks that have been sent this incident's trigger
    notified: list[str] = field(default_factory=list)
    # not stored: breach times for escalation, and the last decision counted
    recent: list[float] = field(default_factory=list, repr=False)
    last_decision: str | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def count(self, ts: float, n: int = 1) -> None:
        self.breach_count += n
        self.last_seen = max(self.last_seen, ts)
        bucket = str(int(ts // BUCKET_SECONDS * BUCKET_SECONDS))
        self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        if len(self.buckets) > MAX_BUCKETS:
            for old in sorted(self.buckets, key=float)[: len(self.buckets) - MAX_BUCKETS]:
                del self.buckets[old]

    def summary(self) -> dict[str, Any]:
        """What the list view and the sinks see."""
        return {
            "id": self.id,
            "title": self.title,
            "severity": self.severity,
            "state": self.state,
            "source": self.source,
            "rule": self.rule_id,
            "dedup_key": self.dedup_key,
            "route": self.route,
            "upstream": self.upstream,
            "policy": self.policy,
            "opened_at": self.opened_at,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "resolved_at": self.resolved_at,
            "breach_count": self.breach_count,
            "requests": self.requests,
        }

    def as_dict(self) -> dict[str, Any]:
        out = self.summary()
        out.update(
            by_policy=dict(self.by_policy),
            by_action=dict(self.by_action),
            chars_released=self.chars_released,
            cuts=self.cuts,
            buckets=dict(self.buckets),
            samples=list(self.samples),
            decision_ids=[s["decision_id"] for s in self.samples if s.get("decision_id")],
            review_items=list(self.review_items),
            monitor=self.monitor,
            acknowledged_at=self.acknowledged_at,
            contained_at=self.contained_at,
        )
        return out

    # -- rows ------------------------------------------------------------------
    _DATA = (
        "requests",
        "by_policy",
        "by_action",
        "chars_released",
        "cuts",
        "buckets",
        "samples",
        "review_items",
        "monitor",
        "acknowledged_at",
        "contained_at",
        "auto_resolve_after",
        "resolve_on_clear",
        "next_seq",
        "notified",
    )

    def upsert(self) -> tuple[str, tuple[Any, ...]]:
        data = json.dumps({k: getattr(self, k) for k in self._DATA}, default=str)
        return (
            "INSERT INTO incidents (id, dedup_key, title, severity, state, source, rule_id, "
            "route, upstream, policy, opened_at, first_seen, last_seen, resolved_at, "
            "breach_count, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET title = excluded.title, "
            "severity = excluded.severity, state = excluded.state, "
            "last_seen = excluded.last_seen, resolved_at = excluded.resolved_at, "
            "breach_count = excluded.breach_count, data = excluded.data",
            (
                self.id,
                self.dedup_key,
                self.title,
                self.severity,
                self.state,
                self.source,
                self.rule_id,
                self.route,
                self.upstream,
                self.policy,
                self.opened_at,
                self.first_seen,
                self.last_seen,
                self.resolved_at,
                self.breach_count,
                data,
            ),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Incident:
        data = json.loads(row["data"])
        inc = cls(
            id=row["id"],
            dedup_key=row["dedup_key"],
            title=row["title"],
            severity=row["severity"],
            state=row["state"],
            source=row["source"],
            rule_id=row["rule_id"],
            route=row["route"],
            upstream=row["upstream"],
            policy=row["policy"],
            opened_at=row["opened_at"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            resolved_at=row["resolved_at"],
            breach_count=row["breach_count"],
        )
        for key in cls._DATA:
            if key in data:
                setattr(inc, key, data[key])
        return inc


@dataclass
class TimelineEvent:
    incident_id: str
    seq: int
    ts: float
    kind: str
    actor: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def insert(self) -> tuple[str, tuple[Any, ...]]:
        return (
            # a retried write after a commit whose answer was lost must not fail forever
            "INSERT INTO incident_events (incident_id, seq, ts, kind, actor, message, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (incident_id, seq) DO NOTHING",
            (
                self.incident_id,
                self.seq,
                self.ts,
                self.kind,
                self.actor,
                self.message,
                json.dumps(self.data, default=str),
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            "message": self.message,
            "data": self.data,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TimelineEvent:
        return cls(
            row["incident_id"],
            row["seq"],
            row["ts"],
            row["kind"],
            row["actor"],
            row["message"],
            json.loads(row["data"]),
        )
