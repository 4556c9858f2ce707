"""What reviewers do to items: claim, release, approve (as is or edited), reject,
escalate, comment, and the same in bulk.

Every change applies only to the version of the item the reviewer saw
(optimistic locking) and writes its audit row in the same transaction; a
decision also writes the route's callback there.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from gateway.config import Settings
from gateway.errors import BadRequest, Conflict, GatewayError, ItemChanged, NotFound
from gateway.events import EventBus
from gateway.records.review import OPEN, ReviewEvent, ReviewItem
from gateway.review.callbacks import callback_for
from gateway.review.items import PRIORITY_STEP, SYSTEM, public_view
from gateway.review.metrics import ReviewMetrics
from gateway.review.store import ReviewStore
from gateway.web.auth import Principal

BULK_ACTIONS = ("approve", "reject", "escalate", "claim", "release")
# who decides when nobody did in time
SYSTEM_PRINCIPAL = Principal(SYSTEM, frozenset({"admin"}))


class ReviewerActions:
    def __init__(
        self, settings: Settings, db: ReviewStore, metrics: ReviewMetrics, events: EventBus
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.events = events

    async def get(self, item_id: str) -> ReviewItem:
        item = await self.db.get(item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        return item

    # -- checks -------------------------------------------------------------------------
    @staticmethod
    def check(item: ReviewItem, principal: Principal, version: Any) -> None:
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise BadRequest("send the item's version (optimistic locking)") from None
        if item.state != OPEN:
            raise Conflict(
                f"item {item.id} was already {item.state} by {item.decided_by}; "
                "reload to see the decision"
            )
        if item.version != version:
            raise Conflict(
                f"item {item.id} changed since you loaded it (your version {version}, "
                f"now {item.version}); reload and try again"
            )
        if item.assignee and item.assignee != principal.name and not principal.has("lead"):
            raise Conflict(f"item {item.id} is claimed by {item.assignee}")

    @staticmethod
    def conflict(exc: ItemChanged, item_id: str) -> Conflict | NotFound:
        cur = exc.current
        if cur is None:
            return NotFound(f"no review item {item_id}")
        if cur.state != OPEN:
            return Conflict(
                f"item {item_id} was just {cur.state} by {cur.decided_by}; "
                "your action was not applied"
            )
        return Conflict(
            f"item {item_id} was changed by someone else at the same time "
            f"(now version {cur.version}); reload and try again"
        )

    async def apply(
        self,
        item: ReviewItem,
        principal: Principal,
        action: str,
        changes: dict[str, Any],
        detail: Any = None,
        callback: dict[str, Any] | None = None,
    ) -> ReviewItem:
        try:
            return await self.db.change(
                item,
                actor=principal.name,
                action=action,
                changes=changes,
                detail=detail,
                callback=callback,
            )
        except ItemChanged as exc:
            raise self.conflict(exc, item.id) from None

    # -- actions ------------------------------------------------------------------------------
    async def claim(self, item_id: str, principal: Principal, version: Any) -> ReviewItem:
        item = await self.get(item_id)
        self.check(item, principal, version)
        if item.assignee == principal.name:
            return item
        return await self.apply(
            item, principal, "claim", {"assignee": principal.name}, {"previous": item.assignee}
        )

    async def release(self, item_id: str, principal: Principal, version: Any) -> ReviewItem:
        item = await self.get(item_id)
        self.check(item, principal, version)
        if item.assignee is None:
            return item
        return await self.apply(
            item, principal, "release", {"assignee": None}, {"previous": item.assignee}
        )

    async def approve(
        self,
        item_id: str,
        principal: Principal,
        version: Any,
        edited: dict[str, str] | None = None,
        note: str = "",
    ) -> ReviewItem:
        item = await self.get(item_id)
        self.check(item, principal, version)
        keys = set(item.record.segment_keys)
        if edited:
            if not isinstance(edited, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in edited.items()
            ):
                raise BadRequest('"edited" must map segment keys to replacement text')
            unknown = sorted(set(edited) - keys)
            if unknown:
                raise BadRequest(
                    f"no segment {', '.join(unknown)} in this response "
                    f"(segments: {', '.join(sorted(keys))})"
                )
            original = item.segments or {}
            edited = {k: v for k, v in edited.items() if original.get(k) != v} or None
        action = "approve-edited" if edited else "approve"
        detail: dict[str, Any] = {"note": note} if note else {}
        if edited:
            detail["edited_segments"] = {
                k: {"chars": len(v), "sha256": hashlib.sha256(v.encode()).hexdigest()}
                for k, v in edited.items()
            }
        return await self.decide(
            item, principal, "approved", action, {"edited": edited, "reason": note or None}, detail
        )

    async def reject(
        self, item_id: str, principal: Principal, version: Any, reason: str
    ) -> ReviewItem:
        reason = (reason or "").strip()
        if not reason:
            raise BadRequest("a rejection needs a reason; the client is shown it")
        item = await self.get(item_id)
        self.check(item, principal, version)
        return await self.decide(
            item, principal, "rejected", "reject", {"reason": reason}, {"reason": reason}
        )

    async def decide(
        self,
        item: ReviewItem,
        principal: Principal,
        outcome: str,
        action: str,
        changes: dict[str, Any],
        detail: Any,
        state: str | None = None,
    ) -> ReviewItem:
        now = time.time()
        state = state or outcome
        changes = dict(
            changes, state=state, outcome=outcome, decided_by=principal.name, decided_at=now
        )
        route = self.settings.find_route(item.route)
        callback = callback_for(route, item, state, outcome, now)
        after = await self.apply(item, principal, action, changes, detail, callback=callback)
        self.metrics.decisions.labels(item.policy, outcome).inc()
        self.metrics.decision_time.labels(outcome).observe(max(now - item.created_at, 0))
        self.metrics.depth.labels(OPEN, item.severity).dec()
        self.metrics.depth.labels(state, item.severity).inc()
        self.events.publish(ReviewEvent("review.decided", public_view(after), outcome=outcome))
        return after

    async def escalate(
        self, item_id: str, principal: Principal, version: Any, note: str = ""
    ) -> ReviewItem:
        item = await self.get(item_id)
        self.check(item, principal, version)
        after = await self.apply(
            item,
            principal,
            "escalate",
            {"priority": ("+", PRIORITY_STEP), "escalations": ("+", 1)},
            {"note": note} if note else None,
        )
        self.metrics.escalations.labels("reviewer").inc()
        self.events.publish(
            ReviewEvent(
                "review.escalated",
                public_view(after),
                reason="reviewer",
                by=principal.name,
                note=note,
            )
        )
        return after

    async def comment(self, item_id: str, principal: Principal, body: str) -> dict[str, Any]:
        body = (body or "").strip()
        if not body:
            raise BadRequest("a comment needs some text")
        if len(body) > 10_000:
            raise BadRequest("a comment is limited to 10,000 characters")
        await self.get(item_id)
        return await self.db.comment(item_id, principal.name, body)

    async def bulk(
        self, principal: Principal, action: str, items: list[dict], reason: str = ""
    ) -> list[dict[str, Any]]:
        if action not in BULK_ACTIONS:
            raise BadRequest("bulk action must be approve, reject, escalate, claim or release")
        if not isinstance(items, list) or not items or len(items) > 500:
            raise BadRequest('"items" must list 1 to 500 {"id", "version"} objects')
        out = []
        for entry in items:
            if not isinstance(entry, dict) or "id" not in entry:
                raise BadRequest('each bulk entry needs "id" and "version"')
            item_id, version = entry["id"], entry.get("version")
            try:
                if action == "approve":
                    done = await self.approve(item_id, principal, version, note=reason)
                elif action == "reject":
                    done = await self.reject(item_id, principal, version, reason)
                elif action == "escalate":
                    done = await self.escalate(item_id, principal, version, reason)
                elif action == "claim":
                    done = await self.claim(item_id, principal, version)
                else:
                    done = await self.release(item_id, principal, version)
                out.append(
                    {"id": item_id, "ok": True, "state": done.state, "version": done.version}
                )
            except GatewayError as err:
                out.append(
                    {
                        "id": item_id,
                        "ok": False,
                        "status": err.status,
                        "code": err.code,
                        "message": err.message,
                    }
                )
        return out
