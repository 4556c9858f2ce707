"""Making a review item from a held answer: its SLA, expiry, retention and privacy."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from gateway.config import ReviewSettings, Route
from gateway.records.review import OPEN, HeldAnswer, ReviewItem
from gateway.secretmask import mask_secrets

RESULT_PATH = "/governance/v1/reviews/{id}/result"
# priority points per severity rank and per escalation
PRIORITY_STEP = 10
SYSTEM = "system"


def new_id() -> str:
    return uuid.uuid4().hex


def text_hash(texts: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(texts):
        digest.update(key.encode() + b"\0" + texts[key].encode() + b"\0")
    return digest.hexdigest()


# how much of a held answer the queue shows
PREVIEW_WORDS = 16
PREVIEW_CHARS = 140


def preview(texts: dict[str, str]) -> str:
    """The first words of the answer (its first segment), secrets masked."""
    first = next((texts[k] for k in sorted(texts) if texts[k].strip()), "")
    words = first.split()
    shown = " ".join(words[:PREVIEW_WORDS])
    cut = len(words) > PREVIEW_WORDS or len(shown) > PREVIEW_CHARS
    shown = mask_secrets(shown)[:PREVIEW_CHARS]
    return shown + "…" if cut else shown


def new_item(answer: HeldAnswer, settings: ReviewSettings, route: Route | None) -> ReviewItem:
    now = time.time()
    opts = answer.options
    decision = answer.decision
    # privacy mode keeps only a hash of the text and the evidence
    private = (route is not None and route.review.privacy == "hash-and-evidence") or not (
        opts.store_text
    )
    sla = opts.sla or settings.sla[answer.severity.value]
    retention = route.review.retention_days if route is not None else 30.0
    request: dict[str, Any] = {
        "method": answer.request.method,
        "path": answer.request.path,
        "query": answer.request.query,
    }
    if not private:
        request["headers"] = answer.request.headers
        request["body"] = answer.request.body
    return ReviewItem(
        id=new_id(),
        decision_id=decision.decision_id,
        created_at=now,
        updated_at=now,
        state=OPEN,
        outcome=None,
        route=decision.route,
        protocol=decision.protocol,
        path=decision.path,
        model=decision.model,
        stream=decision.stream,
        policy=answer.policy,
        policies=answer.policies,
        severity=answer.severity.value,
        severity_rank=answer.severity.rank,
        priority=answer.severity.rank * PRIORITY_STEP,
        sla_deadline=now + sla,
        expires_at=now + opts.expire_after,
        expire_action=opts.expire_action,
        retain_until=now + retention * 86400,
        overdue=False,
        escalations=0,
        assignee=None,
        key_id=answer.key_id,
        tenant=answer.tenant,
        text_stored=not private,
        preview="" if private else preview(answer.texts),
        decided_by=None,
        decided_at=None,
        version=1,
        text_hash=text_hash(answer.texts),
        request=request,
        response=None if private else answer.response,
        segments=None if private else dict(answer.texts),
        record=decision,
    )


def public_view(item: ReviewItem, now: float | None = None) -> dict[str, Any]:
    """An item as the reviewer API shows it (the client's key id stays inside)."""
    now = time.time() if now is None else now
    out = item.to_json()
    out.pop("key_id", None)
    out["overdue_now"] = item.overdue_at(now)
    return out


def ticket_path(review_id: str) -> str:
    return RESULT_PATH.format(id=review_id)
