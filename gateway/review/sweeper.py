"""The review queue's clock: overdue items are escalated, expired ones decided by their
``expire_action``, items past their retention purged, and the queue's gauges refreshed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.errors import GatewayError, ItemChanged
from gateway.events import EventBus
from gateway.records.review import ReviewEvent
from gateway.review.actions import SYSTEM_PRINCIPAL, ReviewerActions
from gateway.review.items import PRIORITY_STEP, SYSTEM, public_view
from gateway.review.metrics import ReviewMetrics
from gateway.review.store import ReviewStore

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        db: ReviewStore,
        metrics: ReviewMetrics,
        events: EventBus,
        actions: ReviewerActions,
        interval: float,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.events = events
        self.actions = actions
        self.interval = interval

    async def sweep(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        overdue = 0
        for item_id in await self.db.newly_overdue(now):
            item = await self.db.get(item_id)
            if item is None:
                continue
            try:
                after = await self.db.change(
                    item,
                    actor=SYSTEM,
                    action="overdue",
                    changes={
                        "overdue": True,
                        "priority": ("+", PRIORITY_STEP),
                        "escalations": ("+", 1),
                    },
                    detail={"sla_deadline": item.sla_deadline},
                )
            except ItemChanged:
                continue  # a reviewer acted on it meanwhile
            overdue += 1
            self.metrics.escalations.labels("overdue").inc()
            self.events.publish(
                ReviewEvent("review.escalated", public_view(after), reason="overdue")
            )
        expired = 0
        for item in await self.db.newly_expired(now):
            outcome = "approved" if item.expire_action == "approve" else "rejected"
            try:
                await self.actions.decide(
                    item,
                    SYSTEM_PRINCIPAL,
                    outcome,
                    "expire",
                    {"reason": "no reviewer decided in time"},
                    {"expire_action": item.expire_action},
                    state="expired",
                )
            except GatewayError:
                continue
            expired += 1
        purged = await self.db.purge(now)
        await self.refresh_metrics()
        return {"overdue": overdue, "expired": expired, "purged": purged}

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("review sweep failed; will retry")
            await asyncio.sleep(self.interval)

    async def refresh_metrics(self) -> dict[str, Any]:
        counts = await self.db.counts()
        self.metrics.depth.clear()
        for state, by_sev in counts["by_state_severity"].items():
            for sev, n in by_sev.items():
                self.metrics.depth.labels(state, sev).set(n)
        self.metrics.overdue.set(counts["overdue"])
        rates = await self.db.approval_rates()
        for policy, entry in rates.items():
            if entry["approval_rate"] is not None:
                self.metrics.approval_rate.labels(policy).set(entry["approval_rate"])
        return counts
