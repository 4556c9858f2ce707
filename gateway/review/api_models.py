"""The bodies of the reviewer API (``gateway.review.api``), as its OpenAPI document shows them.

They describe what the handlers return; the OpenAPI test checks the two agree.
"""

from __future__ import annotations

from typing import Any

from gateway.web.openapi import ApiModel


class ActionRequest(ApiModel):
    """``version`` guards against a stale view; the other fields belong to one action each."""

    version: int | None = None
    edited: dict[str, str] | None = None
    text: str | None = None
    note: str | None = None
    reason: str | None = None


class CommentRequest(ApiModel):
    body: str


class BulkEntry(ApiModel):
    id: str
    version: int | None = None


class BulkRequest(ApiModel):
    action: str
    items: list[BulkEntry]
    reason: str | None = None


class AllowlistRequest(ApiModel):
    policy: str | None = None
    finding: int | None = None


class ReviewRow(ApiModel):
    id: str
    decision_id: str
    state: str
    route: str
    policy: str
    severity: str
    sla_deadline: float
    version: int
    overdue_now: bool


class ReviewList(ApiModel):
    items: list[ReviewRow]
    total: int
    counts: dict[str, Any]


class ReviewStats(ApiModel):
    counts: dict[str, Any]
    approval_rates: dict[str, dict[str, Any]]


class ReviewDetail(ApiModel):
    item: ReviewRow
    audit: list[dict[str, Any]]
    comments: list[dict[str, Any]]
    callbacks: list[dict[str, Any]]


class ReviewAudit(ApiModel):
    audit: list[dict[str, Any]]


class ReviewActed(ApiModel):
    item: ReviewRow


class CommentCreated(ApiModel):
    comment: dict[str, Any]


class BulkResult(ApiModel):
    id: str
    ok: bool


class BulkResults(ApiModel):
    results: list[BulkResult]


class AllowlistOutcome(ApiModel):
    applied: bool


class ReviewResult(ApiModel):
    """The outcome a client polls for: ``pending`` with its deadline, or the decision."""

    id: str
    decision_id: str
    status: str
