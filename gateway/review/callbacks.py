"""Signed callbacks that tell a route's owner an item was decided.

The callback row is written in the same transaction as the decision, so a
decision is never without its callback. A sender delivers due rows with an
HMAC-SHA256 signature over ``timestamp.body``, retrying with backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from gateway.config import Route, Settings
from gateway.events import EventBus
from gateway.records.review import ReviewEvent, ReviewItem
from gateway.retry import delay
from gateway.review.items import ticket_path
from gateway.review.metrics import ReviewMetrics
from gateway.review.store import ReviewStore

log = logging.getLogger(__name__)

# a failed delivery waits at most this long before its next try
MAX_DELAY = 3600.0
# callbacks claimed, and sent at once, per round: all of a round are sent together,
# each within ``callback_timeout``, so the whole round ends inside its lease and no
# other process takes a row over while it is still on its way
BATCH = 8
# a claim outlasts the send's timeout by this much: the time to claim and record
LEASE_MARGIN = 15.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def callback_for(
    route: Route | None, item: ReviewItem, state: str, outcome: str, now: float
) -> dict[str, Any] | None:
    """The callback a decision on ``item`` owes its route, if the route asks for one."""
    if route is None or not route.review.callback_url:
        return None
    return {
        "url": route.review.callback_url,
        "payload": {
            "type": "review.decided",
            "id": item.id,
            "decision_id": item.decision_id,
            "status": state,
            "outcome": outcome,
            "route": item.route,
            "decided_at": now,
            "result": ticket_path(item.id),
        },
    }


class Callbacks:
    def __init__(
        self,
        settings: Settings,
        db: ReviewStore,
        metrics: ReviewMetrics,
        events: EventBus,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.settings = settings
        self.cfg = settings.review
        self.db = db
        self.metrics = metrics
        self._http = http
        self._wake = asyncio.Event()
        events.subscribe(ReviewEvent, self._decided)

    def _decided(self, event: ReviewEvent) -> None:
        if event.type == "review.decided":
            self._wake.set()

    async def deliver_due(self) -> int:
        """Send every due callback once; failed ones are retried later with backoff."""
        sent = 0
        while True:
            claimed, ok = await self._send_batch()
            sent += ok
            # a full batch may have left more due rows behind it
            if claimed < BATCH:
                return sent

    async def _send_batch(self) -> tuple[int, int]:
        """Claim up to ``BATCH`` due callbacks and send them at once: (claimed, sent)."""
        now = time.time()
        token, due = await self.db.due_callbacks(
            now, BATCH, lease=self.cfg.callback_timeout + LEASE_MARGIN
        )
        results = await asyncio.gather(
            *(self._send(cb, token, now) for cb in due), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(due), sum(1 for result in results if result is True)

    async def _send(self, cb: dict[str, Any], token: str, now: float) -> bool:
        route = self.settings.find_route(cb["route"])
        secret = os.environ.get(route.review.callback_secret_env or "") if route else None
        attempts = cb["attempts"] + 1
        error = None
        ok = False
        if not secret:
            error = "callback secret is not set"
        else:
            body = orjson.dumps(cb["payload"])
            stamp = str(int(now))
            headers = {
                "content-type": "application/json",
                "x-governance-timestamp": stamp,
                "x-governance-signature": sign(secret, stamp, body),
                "x-governance-delivery": cb["id"],
            }
            try:
                async with asyncio.timeout(self.cfg.callback_timeout):
                    async with self._http().post(cb["url"], data=body, headers=headers) as resp:
                        ok = 200 <= resp.status < 300
                        if not ok:
                            error = f"HTTP {resp.status}"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        give_up = not ok and attempts >= self.cfg.callback_attempts
        await self.db.callback_done(
            cb["id"],
            token=token,
            ok=ok,
            attempts=attempts,
            next_at=now + delay(attempts, first=2.0, cap=MAX_DELAY),
            error=error,
            give_up=give_up,
        )
        self.metrics.callbacks.labels("ok" if ok else ("failed" if give_up else "retry")).inc()
        return ok

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("review callbacks failed; will retry")
