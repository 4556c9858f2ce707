"""What a client is told about a held answer: pending, or the decision with the answer.

An approved answer is rebuilt in the client's own protocol by the adapter it
was held under: the stored body with the reviewer's edits, or, for a stream
that never existed as one body, a whole answer made from its text.
"""

from __future__ import annotations

from gateway.proxy.adapters import Adapters, RequestInfo
from gateway.records.review import ReviewItem, ReviewOutcome


def outcome_of(item: ReviewItem, adapters: Adapters) -> ReviewOutcome:
    if item.open:
        return ReviewOutcome(
            review_id=item.id,
            decision_id=item.decision_id,
            status=item.state,
            decided_at=None,
            approved=False,
            sla_deadline=item.sla_deadline,
        )
    expired = item.outcome if item.state == "expired" else None
    if not item.approved:
        return ReviewOutcome(
            review_id=item.id,
            decision_id=item.decision_id,
            status=item.state,
            decided_at=item.decided_at,
            approved=False,
            outcome=expired,
            reason=item.reason,
        )
    edited = item.edited or {}
    texts = dict(item.segments or {})
    texts.update(edited)
    response = item.response
    adapter = adapters.named(item.protocol, item.route)
    if edited and adapter is not None:
        info = RequestInfo({}, model=item.model, n=item.record.n)
        # only the edited segments change in a stored body; without one, build it whole
        response = adapter.with_texts(info, item.response, edited if item.response else texts)
    return ReviewOutcome(
        review_id=item.id,
        decision_id=item.decision_id,
        status=item.state,
        decided_at=item.decided_at,
        approved=True,
        outcome=expired,
        edited=bool(edited),
        response=response,
        texts=texts or None,
    )
