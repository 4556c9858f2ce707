"""``ReviewItem``: an answer held for a person, with everything needed to decide on it.

An item is stored before the client hears anything, and changes only
through the review store (optimistic locking, one audit row per change). Its
JSON form is what the reviewer API shows, minus the client's key id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gateway.contract.policy import ReviewOptions
from gateway.records.decision import PolicyVerdict
from gateway.severity import Severity

SCHEMA = 1

OPEN = "pending"
STATES = ("pending", "approved", "rejected", "expired")


@dataclass(frozen=True, slots=True)
class HeldDecision:
    """What the gateway knew of the decision when it held the answer."""

    decision_id: str
    revision: str | None
    route: str
    protocol: str
    path: str
    model: str | None
    stream: bool
    action: str
    policies: tuple[PolicyVerdict, ...]
    breached: tuple[str, ...]
    chars_released: int
    # the answer's segments (choice or block keys), in order
    segment_keys: tuple[str, ...]
    # False when the upstream stream broke off before its end
    complete: bool
    # choices the client asked for (OpenAI ``n``)
    n: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "revision": self.revision,
            "route": self.route,
            "protocol": self.protocol,
            "path": self.path,
            "model": self.model,
            "stream": self.stream,
            "action": self.action,
            "policies": [p.to_json() for p in self.policies],
            "breached": list(self.breached),
            "chars_released": self.chars_released,
            "segment_keys": list(self.segment_keys),
            "complete": self.complete,
            "n": self.n,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeldDecision:
        return cls(
            decision_id=data.get("decision_id", ""),
            revision=data.get("revision"),
            route=data.get("route", ""),
            protocol=data.get("protocol", ""),
            path=data.get("path", ""),
            model=data.get("model"),
            stream=bool(data.get("stream")),
            action=data.get("action", "review"),
            policies=tuple(PolicyVerdict.from_json(p) for p in data.get("policies") or ()),
            breached=tuple(data.get("breached") or ()),
            chars_released=int(data.get("chars_released") or 0),
            segment_keys=tuple(data.get("segment_keys") or ()),
            complete=bool(data.get("complete", True)),
            n=int(data.get("n") or 1),
        )


@dataclass(frozen=True, slots=True)
class ReviewSummary:
    """An item as the queue lists it: its state and routing, and a preview of its text.

    ``preview`` is the first words of the held answer with any secret in
    them masked (empty in privacy mode): enough for a reviewer to pick an
    item, never the whole answer.
    """

    id: str
    decision_id: str
    created_at: float
    updated_at: float
    state: str
    outcome: str | None
    route: str
    protocol: str
    model: str | None
    stream: bool
    # the policy whose action held the answer, and every policy that breached
    policy: str
    policies: tuple[str, ...]
    severity: str
    severity_rank: int
    priority: int
    sla_deadline: float
    expires_at: float
    overdue: bool
    escalations: int
    assignee: str | None
    tenant: str | None
    # False in privacy mode: no request or response text is kept
    text_stored: bool
    preview: str
    decided_by: str | None
    decided_at: float | None
    version: int

    @property
    def open(self) -> bool:
        return self.state == OPEN

    def overdue_at(self, now: float) -> bool:
        return self.state == OPEN and self.sla_deadline < now

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["policies"] = list(self.policies)
        out.setdefault("schema", SCHEMA)
        return out


@dataclass(frozen=True, slots=True)
class ReviewItem(ReviewSummary):
    """The whole item: the summary plus the answer, the request and the evidence."""

    path: str
    expire_action: str
    retain_until: float
    # a hash of the client's API key: only that key may poll the result
    key_id: str | None
    text_hash: str
    # method, path, query and (unless private) safe headers and body
    request: dict[str, Any]
    # the answer as a whole body in the client's protocol
    response: dict[str, Any] | None
    segments: dict[str, str] | None
    record: HeldDecision
    # segment key -> the reviewer's replacement text
    edited: dict[str, str] | None = None
    reason: str | None = None
    schema: int = SCHEMA

    @property
    def approved(self) -> bool:
        """Approved by a person, or expired with ``expire_action: approve``."""
        return self.state == "approved" or (self.state == "expired" and self.outcome == "approved")

    def replace(self, **changes: Any) -> ReviewItem:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        # not super(): slotted dataclasses are rebuilt, which zero-argument super() cannot follow
        out = ReviewSummary.to_json(self)
        out["record"] = self.record.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReviewItem:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["policies"] = tuple(data.get("policies") or ())
        values["record"] = HeldDecision.from_json(data.get("record") or {})
        for flag in ("stream", "overdue", "text_stored"):
            values[flag] = bool(values.get(flag))
        return cls(**values)


# columns a queue listing reads
SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(ReviewSummary))


@dataclass(frozen=True, slots=True)
class Ticket:
    """A held answer's review id and where its client polls for the outcome."""

    review_id: str
    result_path: str

    def marker(self) -> dict[str, str]:
        return {"review_id": self.review_id, "status": "pending", "result": self.result_path}


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """The client's request as a held item keeps it."""

    method: str
    path: str
    query: str
    # request headers without credentials or session state
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HeldAnswer:
    """What the proxy hands the review queue when a ``review`` action holds an answer."""

    decision: HeldDecision
    # the policy whose action held the answer, its review options, and the
    # worst severity among the policies that acted
    policy: str
    options: ReviewOptions
    severity: Severity
    policies: tuple[str, ...]
    request: HeldRequest
    # hash of the client's API key (``None`` without one) and its tenant
    key_id: str | None
    tenant: str | None
    # the answer's full text by segment, and as a whole body in its protocol
    texts: dict[str, str]
    response: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    """A decided item, as its client is told: the approved answer or the reason."""

    review_id: str
    decision_id: str
    status: str
    decided_at: float | None
    approved: bool
    # expired items: what the expiry did (``approved`` or ``rejected``)
    outcome: str | None = None
    reason: str | None = None
    edited: bool = False
    # the approved answer as a whole body in the client's protocol, and by segment
    response: dict[str, Any] | None = None
    texts: dict[str, str] | None = None
    sla_deadline: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET /governance/v1/reviews/{id}/result``, exactly as clients know it."""
        out: dict[str, Any] = {
            "id": self.review_id,
            "decision_id": self.decision_id,
            "status": self.status,
        }
        if self.status == OPEN:
            out["sla_deadline"] = self.sla_deadline
            return out
        out["decided_at"] = self.decided_at
        if self.status == "expired":
            out["outcome"] = self.outcome
        if not self.approved:
            out["reason"] = self.reason
            return out
        out["edited"] = self.edited
        out["response"] = self.response
        if self.response is None:
            out["note"] = "the response text was not stored (privacy mode); send the request again"
        return out


@dataclass(frozen=True, slots=True)
class ReviewEvent:
    """Published on the event bus when an item is held, decided or escalated."""

    type: str
    item: dict[str, Any]
    outcome: str | None = None
    reason: str | None = None
    by: str | None = None
    note: str | None = None
