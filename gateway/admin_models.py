"""The bodies of the core governance API (``gateway.admin``), as its OpenAPI document shows them.

They describe what the handlers return; the handlers build their JSON
themselves, and the OpenAPI test checks the two agree.
"""

from __future__ import annotations

from typing import Any, Literal

from gateway.web.openapi import ApiModel


class Health(ApiModel):
    status: Literal["ok"]


class Readiness(ApiModel):
    ready: bool
    # each check's "ok", or what is wrong ("leader" says "yes" or "no")
    checks: dict[str, str]
    # the checks that are not ok, whether or not they take the process out of rotation
    missing: list[str]


class CheckRequest(ApiModel):
    """Exactly one of ``text`` or ``response``."""

    text: str | None = None
    response: dict[str, Any] | None = None
    route: str | None = None
    query: str | None = None
    sources: list[Any] | dict[str, Any] | None = None


class Finding(ApiModel):
    span: list[int]
    score: float
    message: str
    evidence: dict[str, Any]
    segment: str


class Verdict(ApiModel):
    id: str
    kind: str
    mode: str
    status: Literal["pass", "breach", "error", "skipped", "not_scanned"]
    action: str
    severity: str
    elapsed_ms: float
    findings: list[Finding] = []
    finding_count: int = 0
    error: str | None = None


class CheckResult(ApiModel):
    decision_id: str
    action: str
    breached: list[str]
    policies: list[Verdict]
    route: str
    revision: str | None = None
    # the released text per segment; absent when the action stops the answer
    text: dict[str, str] | None = None
    protocol: str | None = None


class PolicySummary(ApiModel):
    id: str
    kind: str
    mode: str
    action: str
    severity: str
    routes: list[str] | None
    file: str | None


class PolicyList(ApiModel):
    revision: str | None
    files: list[str]
    policies: list[PolicySummary]
    last_reload: float | None
    last_reload_errors: list[Any] | None


class Reloaded(ApiModel):
    reloaded: bool
    revision: str | None
    errors: list[Any] | None


class ReloadFailed(Reloaded):
    """A failed reload: the reload fields beside the error object every failure carries."""

    error: dict[str, Any]


class Attempt(ApiModel):
    route: str
    upstream: str


class Decision(ApiModel):
    """One decision record, as the audit log keeps it."""

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
    policies: list[Verdict]
    breached: list[str]
    chars_released: int
    cut: bool
    attempts: list[Attempt]
    upstream_status: int | None
    added_latency_ms: float
    upstream_ms: float
    total_ms: float
    client_disconnected: bool
    error: dict[str, str] | None = None
    containment: dict[str, Any] | None = None
    review_id: str | None = None


class DecisionList(ApiModel):
    decisions: list[Decision]
