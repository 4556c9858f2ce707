"""The windowed monitors, wired into the running gateway.

Decision endpoints (credit scoring, recommendations) answer with a decision
or a score per request. The proxy publishes each whole JSON answer as an
``AnswerBody``; for a monitored route it is handed to the ``MonitorSet`` on
the next loop turn, so the client never waits on it. Rule changes are
published as ``MonitorEvent`` (the incidents subsystem subscribes), logged
and counted. The windows are saved to the store every few seconds and at
shutdown, and loaded at start, so a restart keeps them; a policy reload
keeps the windows of monitors whose id stays.

With a store several processes share, a monitor must count everyone's
answers: each process parses its answers into observations and hands them
through a ``SharedQueue`` to the process that leads (see
``gateway.store.leadership``), which alone keeps the windows, fires the rules
and saves the windows. A process that becomes the leader loads them first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from gateway.monitors.feedback import (
    FeedbackAck,
    FeedbackBatch,
    FeedbackBatchAck,
    FeedbackEvent,
    FeedbackStore,
    LabelReport,
    parse_batch,
    parse_event,
    week_start,
    weeks_param,
)
from gateway.monitors.windows import MonitorSet, Outcome, parse_monitors
from gateway.policy.reload import PolicySwap
from gateway.proxy.hookspecs import SectionParser, Subsystem
from gateway.proxy.ports import AnswerBody
from gateway.records.monitor import MonitorEvent
from gateway.store.base import Store
from gateway.store.queue import SharedQueue
from gateway.web.api import json_body, json_response
from gateway.web.auth import PRINCIPAL
from gateway.web.openapi import ApiModel, ErrorBody, describe

log = logging.getLogger(__name__)

SAVE_INTERVAL = 5.0
# seconds between hand-overs of observations to the leader, and between its reads
SHARE_INTERVAL = 0.2
# observations the leader applies per read
SHARE_BATCH = 1000
# observations kept for the leader while the store is down; past this the oldest go
MAX_OUTGOING = 100_000


class StoreState:
    """``save_state``/``load_state`` on the gateway's store (the ``kv_state`` table)."""

    def __init__(self, store: Store):
        self.store = store

    async def save_state(self, key: str, state: dict[str, Any]) -> None:
        await self.store.execute(
            "INSERT INTO kv_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            key,
            json.dumps(state),
            time.time(),
        )

    async def load_state(self, key: str) -> dict[str, Any] | None:
        row = await self.store.fetchone("SELECT value FROM kv_state WHERE key = ?", key)
        return json.loads(row["value"]) if row else None


class Monitors(Subsystem):
    name = "monitors"

    @classmethod
    def policy_sections(cls) -> Mapping[str, SectionParser]:
        return {"monitors": parse_monitors}

    def install(self) -> None:
        self.set = MonitorSet([])
        self.routes: frozenset[str] = frozenset()
        self.all_routes = False
        self.state = StoreState(self.gw.store)
        self._task: asyncio.Task[None] | None = None
        registry = self.gw.metrics.registry
        self.events = Counter(
            "gateway_monitor_events_total",
            "Monitor rule changes",
            ["monitor", "rule", "state"],
            registry=registry,
        )
        self.dropped = Counter(
            "gateway_monitor_observations_dropped_total",
            "Observations not handed to the leading process: the store was down too long",
            registry=registry,
        )
        self.values = Gauge(
            "gateway_monitor_value",
            "Latest value of each monitor rule",
            ["monitor", "rule"],
            registry=registry,
        )
        self.feedback_events = Counter(
            "gateway_feedback_events_total",
            "Outcome feedback events received, by type; status accepted or duplicate",
            ["type", "status"],
            registry=registry,
        )
        self.feedback = FeedbackStore(self.gw.store)
        self.gw.events.subscribe(PolicySwap, self.rebuild)
        self._watching = False
        # shared mode: observations on their way to the leader
        self.leadership = self.gw.leadership
        self.shared = SharedQueue(self.gw.store, "monitors")
        self._outgoing: list[list[object]] = []
        # observations on their way to the queue, as statements with their ids
        self._pushing: list[tuple[str, tuple[object, ...]]] = []
        # observations the leader applied whose removal from the queue is not committed
        self._applied: list[str] = []
        self._complained = -60.0
        self._share_task: asyncio.Task[None] | None = None
        self._share_lock = asyncio.Lock()
        self._loaded = self.leadership is None
        if self.leadership is not None:
            self.leadership.on_change(self._on_leadership)

    def rebuild(self, swap: PolicySwap) -> None:
        """A new policy revision: new monitors, with the windows of those that stay."""
        configs = parse_monitors(swap.policy_set.sections.get("monitors", []))
        fresh = MonitorSet(configs, on_event=self._emit)
        fresh.restore(self.set.snapshot())
        self.set = fresh
        # outcome monitors count feedback events, never answers
        answers = [c for c in configs if c.outcome is None]
        routes = {r for c in answers for r in c.routes}
        self.all_routes = "*" in routes
        self.routes = frozenset(routes)
        # without answer monitors the proxy need not hand over any answer at all
        if bool(answers) != self._watching:
            if answers:
                self.gw.events.subscribe(AnswerBody, self.observe)
            else:
                self.gw.events.unsubscribe(AnswerBody, self.observe)
            self._watching = bool(answers)

    def watches(self, route: str) -> bool:
        return bool(self.routes) and (self.all_routes or route in self.routes)

    def observe(self, answer: AnswerBody) -> None:
        """On the request path: take the observation on the next loop turn."""
        if self.watches(answer.route):
            asyncio.get_running_loop().call_soon(
                self._observe, answer.route, answer.body, time.time()
            )

    def _observe(self, route: str, body: Any, now: float) -> None:
        try:
            if self.leadership is None:
                self.set.observe(route, body, now)
                return
            self._hand_over(route, self.set.parse(route, body), now)
        except Exception:  # a monitor must never take requests down
            log.exception("monitor observation failed")

    def _hand_over(self, route: str, pairs: list[tuple[str, Any]], now: float) -> None:
        """Queue parsed observations for the leader (shared mode)."""
        for monitor_id, obs in pairs:
            self._outgoing.append([monitor_id, route, list(obs), now])
        if len(self._outgoing) > MAX_OUTGOING:
            dropped = len(self._outgoing) - MAX_OUTGOING
            del self._outgoing[:dropped]
            self.dropped.inc(dropped)

    # -- outcome feedback ---------------------------------------------------------------------
    async def take_feedback(self, events: list[FeedbackEvent], sender: str) -> list[dict[str, Any]]:
        """Store feedback events once each and feed the new ones to the outcome monitors."""
        ids = [ev.decision_id for ev in events]
        records = await self.feedback.decisions(ids)
        if len(records) < len(set(ids)):
            # this process's own records may still wait in the decision log's batch
            await self.gw.decisions.flush()
            records.update(await self.feedback.decisions([i for i in ids if i not in records]))
        now = time.time()
        stored = await self.feedback.insert(events, records, sender, now)
        acks = []
        for ev, (new, outcome, route) in zip(events, stored, strict=True):
            status = "accepted" if new else "duplicate"
            self.feedback_events.labels(ev.type, status).inc()
            if new:
                self._take_outcome(route, outcome, now)
            acks.append(
                {
                    "event_id": ev.event_id,
                    "status": status,
                    "decision_found": ev.decision_id in records,
                }
            )
        return acks

    def _take_outcome(self, route: str, outcome: Outcome, now: float) -> None:
        try:
            if self.leadership is None:
                self.set.feed(route, outcome, now)
            else:
                self._hand_over(route, self.set.read(route, outcome), now)
        except Exception:  # stored already; a monitor failure must not fail the client
            log.exception("monitor feedback observation failed")

    # -- shared mode --------------------------------------------------------------------------
    def _on_leadership(self, leader: bool) -> None:
        # a new leader loads the windows the last one saved before it applies anything
        self._loaded = False
        if not leader:
            self.shared.release()
            self._applied = []

    async def _share_loop(self) -> None:
        """Hand observations to the leader; as the leader, apply everyone's."""
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            try:
                await self.share()
            except Exception as exc:  # the store is down: keep them, try again
                now = time.monotonic()
                if now - self._complained > 60.0:
                    log.warning("sharing monitor observations failed: %s", type(exc).__name__)
                    self._complained = now

    async def share(self) -> None:
        """One hand-over and, as the leader, one round of applying (tests call it)."""
        # one round at a time: two rounds at once would apply the same queue items twice
        async with self._share_lock:
            await self._share()

    async def _share(self) -> None:
        if self._outgoing and not self._pushing:
            # ids given once: a push whose commit answer was lost is sent again as it was
            self._pushing = self.shared.statements(self._outgoing)
            self._outgoing = []
        if self._pushing:
            await self.gw.store.transaction(self._pushing)
            self._pushing = []
        if self.leadership is None or not self.leadership.leader:
            return
        if not self._loaded:
            await self.set.aload(self.state)
            self._loaded = True
        while True:
            batch = await self.shared.peek(SHARE_BATCH)
            for _, (monitor_id, route, obs, ts) in batch:
                self.set.apply(route, [(monitor_id, obs)], ts)
            # applied: removed now or, if the store fails, with the next removal
            self._applied += [item_id for item_id, _ in batch]
            removal = self.shared.removal(self._applied)
            if removal:
                await self.gw.store.transaction(removal)
            self.shared.removed(self._applied)
            self._applied = []
            if len(batch) < SHARE_BATCH:
                await self.shared.prune()
                return

    async def current(self) -> MonitorSet:
        """The windows to show: ours, or those the leader last saved (at most 5 s old)."""
        if self.keeps_windows:
            return self.set
        view = MonitorSet([mon.config for mon in self.set.monitors.values()])
        await view.aload(self.state)
        return view

    @property
    def keeps_windows(self) -> bool:
        """Whether this process's windows are the real ones (it saves them)."""
        return self.leadership is None or (self.leadership.leader and self._loaded)

    def _emit(self, event: MonitorEvent) -> None:
        self.events.labels(event.monitor, event.rule, event.state).inc()
        self.values.labels(event.monitor, event.rule).set(event.value)
        log.warning(
            "monitor %s: %s %s",
            event.monitor,
            event.rule,
            event.state,
            extra={"fields": {"monitor_event": event.to_json()}},
        )
        self.gw.events.publish(event)

    async def start(self) -> None:
        await self.set.aload(self.state)
        self._loaded = self.leadership is None or self.leadership.leader
        self._task = self.gw.spawn(self._save_loop(), "monitor-state")
        if self.leadership is not None:
            self._share_task = self.gw.spawn(self._share_loop(), "monitor-share")

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            if not self.keeps_windows:
                continue  # another process's windows are the real ones
            try:
                await self.set.asave(self.state)
                for (monitor, rule), value in self.set.gauges().items():
                    self.values.labels(monitor, rule).set(value)
            except Exception as exc:  # the store is down: keep the windows, try again
                log.warning("saving monitor windows failed: %s", exc)

    async def stop(self) -> None:
        for task in (self._task, self._share_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            if self.leadership is not None:
                await self.share()  # observations of this process's last answers
            if self.keeps_windows:
                await self.set.asave(self.state)
        except Exception as exc:
            log.error("could not save monitor windows at shutdown: %s", exc)

    def admin_routes(self, app: web.Application) -> None:
        app[MONITORS] = self
        app.router.add_get("/governance/v1/monitors", status)
        app.router.add_post("/governance/v1/feedback", post_feedback)
        app.router.add_post("/governance/v1/feedback/batch", post_feedback_batch)
        app.router.add_get("/governance/v1/feedback/labels", label_report)


MONITORS = web.AppKey("monitors", Monitors)


class MonitorState(ApiModel):
    id: str
    routes: list[str] | None
    observations: int
    skipped: int
    firing: dict[str, bool]
    values: dict[str, float]


class MonitorList(ApiModel):
    monitors: list[MonitorState]


@describe(
    summary="Monitors: observations, firing rules and last values",
    tags=("monitors",),
    responses={200: MonitorList},
)
async def status(request: web.Request) -> web.Response:
    monitors = await request.app[MONITORS].current()
    out = []
    for mid, mon in monitors.monitors.items():
        out.append(
            {
                "id": mid,
                "routes": mon.config.routes,
                "observations": mon.count,
                "skipped": mon.skipped,
                "firing": mon.firing,
                "values": mon.last_values,
            }
        )
    return json_response({"monitors": out})


@describe(
    summary="Report one outcome of an answer (a click, an acceptance, a label…)",
    tags=("feedback",),
    auth="feedback",
    request=FeedbackEvent,
    responses={200: FeedbackAck, 400: ErrorBody},
    description="Idempotent by event_id: an event sent again is answered as a duplicate "
    "and counted once. An unknown decision id is accepted with decision_found false.",
)
async def post_feedback(request: web.Request) -> web.Response:
    event = parse_event(await json_body(request))
    acks = await request.app[MONITORS].take_feedback([event], request[PRINCIPAL].name)
    return json_response(acks[0])


@describe(
    summary="Report up to 1,000 outcomes in one request",
    tags=("feedback",),
    auth="feedback",
    request=FeedbackBatch,
    responses={200: FeedbackBatchAck, 400: ErrorBody},
    description="All or nothing: one invalid event refuses the batch and names it "
    "(events[i].field). Results follow the order of the events.",
)
async def post_feedback_batch(request: web.Request) -> web.Response:
    events = parse_batch(await json_body(request))
    acks = await request.app[MONITORS].take_feedback(events, request[PRINCIPAL].name)
    accepted = sum(a["status"] == "accepted" for a in acks)
    return json_response(
        {"accepted": accepted, "duplicates": len(acks) - accepted, "results": acks}
    )


@describe(
    summary="Labels against policies, per ISO week: false positives and misses",
    tags=("feedback",),
    query={
        "weeks": "ISO weeks to cover, this one included (1-104, default 8)",
        "policy": "only this policy's labels",
    },
    responses={200: LabelReport, 400: ErrorBody},
)
async def label_report(request: web.Request) -> web.Response:
    weeks = weeks_param(request.query.get("weeks"))
    since = week_start(time.time(), weeks)
    rows = await request.app[MONITORS].feedback.label_report(
        since, request.query.get("policy") or None
    )
    return json_response({"since": since, "weeks": rows})
