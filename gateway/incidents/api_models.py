"""The bodies of the incident API (``gateway.incidents.api``), as its OpenAPI document shows them.

They describe what the handlers return; the OpenAPI test checks the two agree.
"""

from __future__ import annotations

from typing import Any

from gateway.web.openapi import ApiModel


class IncidentActionRequest(ApiModel):
    """``note`` for acknowledge, contained, resolved; ``text`` for notes; ``review_item``."""

    note: str | None = None
    text: str | None = None
    review_item: str | None = None


class ContainRequest(ApiModel):
    mode: str
    reason: str | None = None
    incident_id: str | None = None


class RestoreRequest(ApiModel):
    reason: str | None = None


class Switch(ApiModel):
    route: str
    mode: str
    incident_id: str | None
    actor: str
    reason: str
    since: float


class IncidentSummary(ApiModel):
    id: str
    title: str
    severity: str
    state: str
    source: str
    route: str | None
    policy: str | None
    opened_at: float
    last_seen: float
    breach_count: int


class IncidentList(ApiModel):
    incidents: list[IncidentSummary]
    rule_errors: list[Any]


class TimelineEntry(ApiModel):
    seq: int
    ts: float
    kind: str
    actor: str
    message: str
    data: Any


class IncidentDetail(IncidentSummary):
    timeline: list[TimelineEntry]
    containment: list[Switch]


class ContainmentList(ApiModel):
    containment: list[Switch]


class Contained(ApiModel):
    containment: Switch


class Restored(ApiModel):
    restored: Switch
