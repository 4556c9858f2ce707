"""The incident service: signals in, incident changes out, off the hot path.

The request path only appends each decision record (and each monitor event)
to a queue. A background task drains it in batches, runs the rules over it
(``signals``), updates the open incidents (``book``), and writes everything
one batch caused (incident rows, timeline events, outbox rows, containment
switches) in one store transaction. Containment takes effect in memory
before that write, so the very next request sees it. People's actions
(acknowledge, resolve, contain…) go through the same lock and the same
kind of write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.config import Settings
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.incidents.book import IncidentBook
from gateway.incidents.containment import ContainmentTable
from gateway.incidents.metrics import IncidentMetrics
from gateway.incidents.model import ACTIVE_STATES, Incident, TimelineEvent
from gateway.incidents.outbox import Outbox
from gateway.incidents.plan import Plan
from gateway.incidents.signals import Matcher
from gateway.policy.reload import PolicyHolder
from gateway.records.containment import MODES, Switch
from gateway.records.decision import DecisionRecord
from gateway.records.monitor import MonitorEvent
from gateway.retry import retry_forever
from gateway.store.base import Store

log = logging.getLogger(__name__)


def _ignore(count: int) -> None:
    """The commit hook until a journal registers the service."""


MAX_QUEUE = 100_000
# records handled per turn of the event loop: a breach storm must not stall
# the requests sharing the loop for more than a few milliseconds at a time
MAX_BATCH = 256

Signal = DecisionRecord | MonitorEvent
# seconds a stopping gateway waits for the outbox's deliveries in flight
SENDER_GRACE = 5.0


class IncidentService:
    """Incident rules over decision records and monitor events (a ``Durable`` of the journal)."""

    name = "incidents"

    def __init__(
        self, settings: Settings, store: Store, policies: PolicyHolder, metrics: IncidentMetrics
    ) -> None:
        self.settings = settings
        self.cfg = settings.incidents
        self.store = store
        self.policies = policies
        self.metrics = metrics
        self.outbox = Outbox(store, self.cfg, metrics)
        self.table = ContainmentTable(metrics)
        self.book = IncidentBook(self.cfg, settings.routes, metrics, self.outbox, self.table)
        self.matcher = Matcher(self.book)
        self.queue: deque[Signal] = deque()
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._unwritten = Plan()
        # decision records taken from the bus, and how many of them still wait in the queue;
        # ``committed`` hears how many are applied and written
        self._received = 0
        self._queued = 0
        self.committed: Callable[[int], None] = _ignore

    @property
    def rule_errors(self) -> list[str]:
        return self.matcher.errors

    # -- the hot path: O(1), no I/O ----------------------------------------------------
    def on_decision(self, record: DecisionRecord) -> None:
        self._received += 1
        self._queued += 1
        self._put(record)

    def on_monitor_event(self, event: MonitorEvent) -> None:
        """Take a monitor event; safe from any thread."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(self._put, event)
        else:
            self._put(event)

    def _put(self, item: Signal) -> None:
        if len(self.queue) >= MAX_QUEUE:
            dropped = self.queue.popleft()
            self._queued -= isinstance(dropped, DecisionRecord)
            self.metrics.dropped.inc()
        self.queue.append(item)
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.matcher.refresh(self.policies.current, strict=True)
        rows = await self.store.fetchall(
            "SELECT * FROM incidents WHERE state IN (?, ?, ?)", *ACTIVE_STATES
        )
        self.book.load(Incident.from_row(row) for row in rows)
        self.table.load(
            await self.store.fetchall("SELECT * FROM route_containment"),
            {r.name for r in self.settings.routes},
        )
        self.book.update_gauges()
        self._task = asyncio.create_task(self._run(), name="incidents")
        self._sender = asyncio.create_task(self.outbox.run(), name="incident-outbox")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.settle()
        except Exception as exc:
            log.error("incident events not written at shutdown: %s", exc)
        if self._sender is not None:
            # a delivery in flight finishes and is marked done, or a restart
            # would send it again; only one that hangs is cut short
            self.outbox.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), SENDER_GRACE)
            except TimeoutError:
                self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self.outbox.close()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.tick)
            except TimeoutError:
                pass
            self._wake.clear()
            # the store is down: the plan is kept and written by a later try
            await retry_forever(
                self.process,
                what="writing incident state",
                first=self.cfg.tick,
                cap=10.0,
                give_up=lambda: self._stopping,
            )

    # -- processing ----------------------------------------------------------------------------
    async def process(self) -> None:
        """Drain the queue, apply the rules and the quiet-period checks, write the result."""
        async with self.lock:
            self.matcher.refresh(self.policies.current)
            now = time.time()
            plan = Plan()
            for _ in range(min(len(self.queue), MAX_BATCH)):
                item = self.queue.popleft()
                self._queued -= isinstance(item, DecisionRecord)
                try:
                    if isinstance(item, DecisionRecord):
                        self.matcher.on_record(item, plan, now)
                    else:
                        self.matcher.on_monitor(item, plan, now)
                except Exception:
                    log.exception("incident rules failed on a %s", type(item).__name__)
            self.book.tick(plan, now)
            self.matcher.sweep(now)
            await self._write(plan)
        if self.queue:
            self._wake.set()

    async def _write(self, plan: Plan) -> None:
        pending = self._unwritten
        pending.merge(plan)
        if pending:
            await self.store.transaction(pending.all())
            self._unwritten = Plan()
            self.book.update_gauges()
            if pending.outbox:
                self.outbox.wake()
        # every record taken off the queue so far is applied, and what it changed written
        self.committed(self._received - self._queued)

    async def replay(self, records: list[DecisionRecord]) -> None:
        """Apply records recovered from a journal, and return once what they changed is written.

        They count as arriving now: the windows assume time only moves
        forward, and a breach from before a crash belongs in the window the
        incident rules see after it. Once applied they are never applied
        again: a failed write is retried here, not by replaying them.
        """
        async with self.lock:
            self.matcher.refresh(self.policies.current)
            now = time.time()
            plan = Plan()
            for record in records:
                try:
                    self.matcher.on_record(replace(record, ts=now), plan, now)
                except Exception:
                    log.exception("incident rules failed on a replayed record")
            self.book.tick(plan, now)
            self._unwritten.merge(plan)
        written = await retry_forever(
            self._write_pending,
            what="writing replayed incident state",
            first=self.cfg.tick,
            cap=10.0,
            give_up=lambda: self._stopping,
        )
        if not written:
            raise RuntimeError("stopped before the replayed incident state was written")

    async def _write_pending(self) -> None:
        async with self.lock:
            await self._write(Plan())

    async def settle(self) -> None:
        """Process everything queued so far (the API reads after it, and tests wait on it)."""
        await self.process()
        while self.queue:
            await self.process()

    # -- reading ---------------------------------------------------------------------------------
    async def get(self, incident_id: str) -> Incident:
        inc = self.book.by_id.get(incident_id)
        if inc is not None:
            return inc
        row = await self.store.fetchone("SELECT * FROM incidents WHERE id = ?", incident_id)
        if row is None:
            raise NotFound(f"no incident {incident_id}")
        return Incident.from_row(row)

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        rows = await self.store.fetchall(
            "SELECT * FROM incident_events WHERE incident_id = ? ORDER BY seq", incident_id
        )
        return [TimelineEvent.from_row(r) for r in rows]

    async def detail(self, incident_id: str) -> dict[str, Any]:
        """An incident with its timeline and the switches it holds, as the API shows it."""
        inc = await self.get(incident_id)
        out = inc.as_dict()
        out["timeline"] = [e.as_dict() for e in await self.timeline(incident_id)]
        out["containment"] = [s.to_json() for s in self.table.of_incident(incident_id)]
        return out

    async def list(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        route: str | None = None,
        policy: str | None = None,
        source: str | None = None,
        active: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        clauses, params = [], []
        for column, value in (
            ("state", state),
            ("severity", severity),
            ("route", route),
            ("policy", policy),
            ("source", source),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if active is not None:
            marks = ", ".join("?" for _ in ACTIVE_STATES)
            clauses.append(f"state {'IN' if active else 'NOT IN'} ({marks})")
            params.extend(ACTIVE_STATES)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.store.fetchall(
            f"SELECT * FROM incidents {where} ORDER BY opened_at DESC LIMIT ?", *params, limit
        )
        # the in-memory copy is ahead of the row between two batch writes
        return [(self.book.by_id.get(r["id"]) or Incident.from_row(r)).summary() for r in rows]

    # -- people's actions ------------------------------------------------------------------------
    async def _mutate(self, incident_id: str, change: Callable[[Incident, Plan], None]) -> Incident:
        async with self.lock:
            # decisions already queued belong before a person's action
            plan = Plan()
            inc = await self.get(incident_id)
            change(inc, plan)
            plan.dirty[inc.id] = inc
            await self._write(plan)
            return inc

    async def acknowledge(self, incident_id: str, actor: str, note: str = "") -> Incident:
        def change(inc: Incident, plan: Plan) -> None:
            if not inc.active:
                raise Conflict(f"incident {inc.id} is {inc.state}; only open ones are acknowledged")
            if inc.acknowledged_at is not None:
                raise Conflict(f"incident {inc.id} is already acknowledged")
            inc.acknowledged_at = time.time()
            if inc.state == "open":
                self.book.set_state(inc, "acknowledged")
            self.book.event(
                inc,
                "acknowledged",
                actor,
                note or f"acknowledged by {actor}",
                plan,
                sink_event="acknowledge",
            )

        return await self._mutate(incident_id, change)

    async def note(self, incident_id: str, actor: str, text: str) -> Incident:
        if not text.strip():
            raise BadRequest("a note needs text")

        def change(inc: Incident, plan: Plan) -> None:
            self.book.event(inc, "note", actor, text[:10_000], plan, sink_event="note")

        return await self._mutate(incident_id, change)

    async def mark_contained(self, incident_id: str, actor: str, note: str = "") -> Incident:
        def change(inc: Incident, plan: Plan) -> None:
            if inc.state == "contained":
                raise Conflict(f"incident {inc.id} is already contained")
            self.book.set_state(inc, "contained")
            inc.contained_at = time.time()
            self.book.event(
                inc,
                "contained",
                actor,
                note or f"marked contained by {actor}",
                plan,
                data={"manual": True},
                sink_event="contain",
            )

        return await self._mutate(incident_id, change)

    async def resolve(self, incident_id: str, actor: str, note: str = "") -> Incident:
        def change(inc: Incident, plan: Plan) -> None:
            self.book.resolve(inc, actor, note or f"resolved by {actor}", plan)

        return await self._mutate(incident_id, change)

    async def postmortem_done(self, incident_id: str, actor: str) -> Incident:
        def change(inc: Incident, plan: Plan) -> None:
            self.book.set_state(inc, "postmortem_done")
            self.book.event(
                inc, "postmortem_done", actor, f"post-mortem completed by {actor}", plan
            )

        return await self._mutate(incident_id, change)

    async def link_review(self, incident_id: str, review_id: str, actor: str) -> Incident:
        review_id = review_id.strip()
        if not review_id or len(review_id) > 200:
            raise BadRequest("review_item must be a non-empty id")

        def change(inc: Incident, plan: Plan) -> None:
            if review_id in inc.review_items:
                return
            inc.review_items.append(review_id)
            self.book.event(
                inc,
                "review_linked",
                actor,
                f"review item {review_id} linked",
                plan,
                data={"review_item": review_id},
                sink_event="review_linked",
            )

        return await self._mutate(incident_id, change)

    async def contain_route(
        self, route: str, mode: str, actor: str, *, incident_id: str | None = None, reason: str = ""
    ) -> Switch:
        r = self.book.routes.get(route)
        if r is None:
            raise NotFound(f"no route named {route!r}")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}")
        if mode == "fallback" and not r.fallback:
            raise Conflict(f"route {route} has no fallback route to switch to")
        async with self.lock:
            plan = Plan()
            inc = await self.get(incident_id) if incident_id else None
            switch = self.book.contain(
                route,
                mode,  # type: ignore[arg-type]
                inc,
                actor,
                reason or f"manual, by {actor}",
                plan,
            )
            await self._write(plan)
            return switch

    async def restore_route(self, route: str, actor: str, reason: str = "") -> Switch:
        if route not in self.book.routes:
            raise NotFound(f"no route named {route!r}")
        async with self.lock:
            switch = self.table.switches.get(route)
            if switch is None:
                raise Conflict(f"route {route} is not contained")
            inc = None
            if switch.incident_id:
                try:
                    inc = await self.get(switch.incident_id)
                except NotFound:
                    inc = None
            plan = Plan()
            self.book.restore(route, actor, reason or f"restored by {actor}", plan, inc)
            await self._write(plan)
            return switch
