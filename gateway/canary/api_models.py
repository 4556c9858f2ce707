"""The bodies of the route-variants API (``gateway.canary.api``), as OpenAPI shows them."""

from __future__ import annotations

from typing import Any

from gateway.web.openapi import ApiModel


class VariantActionRequest(ApiModel):
    """``variant``: which one (promote: default the only candidate; rollback: default all
    but the baseline); ``reason``: recorded with the change."""

    variant: str | None = None
    reason: str | None = None


class WeightsOverride(ApiModel):
    route: str
    weights: dict[str, float]
    actor: str
    reason: str
    since: float
    incident_id: str | None = None
    registry: dict[str, str] | None = None


class VariantFigures(ApiModel):
    answers: int
    breaches: int
    breach_rate: float
    errors: int
    error_rate: float
    latency_ms: float


class VariantStatus(ApiModel):
    route: str
    baseline: str | None = None
    configured: dict[str, float]
    weights: dict[str, float]
    override: WeightsOverride | None = None
    sticky: dict[str, Any]
    rollback_on: dict[str, Any] | None = None
    window_start: float
    figures: dict[str, VariantFigures]
    # variants named by a registry alias: the version it points at and its URL (None: unknown)
    models: dict[str, dict[str, Any]]


class VariantStatusList(ApiModel):
    routes: list[VariantStatus]


class WeightsChanged(ApiModel):
    weights: WeightsOverride
