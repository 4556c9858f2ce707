"""The review queue's ``HoldPort``: store a held answer, and tell who waits when it is decided.

The item is committed to the store before ``hold`` returns, so an
acknowledged hold survives a crash. A client whose policy waits is woken
by a decision taken in this process, and polls the store at least once a
second for one taken by another.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.config import Settings
from gateway.errors import ReviewUnavailable
from gateway.events import EventBus
from gateway.proxy.adapters import Adapters
from gateway.records.review import OPEN, HeldAnswer, ReviewEvent, ReviewOutcome, Ticket
from gateway.review.items import new_item, public_view, ticket_path
from gateway.review.metrics import ReviewMetrics
from gateway.review.outcomes import outcome_of
from gateway.review.store import ReviewStore

log = logging.getLogger(__name__)

# seconds a held answer may take to be stored; a store that hangs (rather than
# failing) would otherwise keep its client waiting for as long as the driver
# does, up to a minute, before it hears ``review-unavailable``
HOLD_TIMEOUT = 10.0


class Holds:
    def __init__(
        self,
        settings: Settings,
        db: ReviewStore,
        metrics: ReviewMetrics,
        events: EventBus,
        adapters: Adapters,
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.events = events
        self.adapters = adapters
        self._waiters: dict[str, asyncio.Event] = {}
        events.subscribe(ReviewEvent, self._decided)

    async def hold(self, answer: HeldAnswer) -> Ticket:
        route = self.settings.find_route(answer.decision.route)
        item = new_item(answer, self.settings.review, route)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(HOLD_TIMEOUT):
                await self.db.insert(item)
        except TimeoutError as exc:
            log.error("could not store a held response: the store took over %gs", HOLD_TIMEOUT)
            raise ReviewUnavailable(
                "the response needs review but could not be stored; try again"
            ) from exc
        except Exception as exc:
            log.exception("could not store a held response")
            raise ReviewUnavailable(
                "the response needs review but could not be stored; try again"
            ) from exc
        self.metrics.hold_time.observe(time.perf_counter() - started)
        self.metrics.depth.labels(OPEN, item.severity).inc()
        self.events.publish(ReviewEvent("review.held", public_view(item)))
        return Ticket(item.id, ticket_path(item.id))

    async def wait(self, review_id: str, seconds: float) -> ReviewOutcome | None:
        event = self._waiters.setdefault(review_id, asyncio.Event())
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        try:
            while True:
                left = end - loop.time()
                if left <= 0:
                    return None
                try:
                    # a decision taken by another process only shows in the store
                    await asyncio.wait_for(event.wait(), min(left, 1.0))
                except TimeoutError:
                    pass
                current = await self.db.get(review_id)
                if current is None or current.state != OPEN:
                    return outcome_of(current, self.adapters) if current else None
        finally:
            self._waiters.pop(review_id, None)

    def _decided(self, event: ReviewEvent) -> None:
        if event.type == "review.decided":
            waiter = self._waiters.get(event.item["id"])
            if waiter is not None:
                waiter.set()
