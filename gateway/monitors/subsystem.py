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

from gateway.monitors.windows import MonitorSet, parse_monitors
from gateway.policy.reload import PolicySwap
from gateway.proxy.hookspecs import SectionParser, Subsystem
from gateway.proxy.ports import AnswerBody
from gateway.records.monitor import MonitorEvent
from gateway.store.base import Store
from gateway.store.queue import SharedQueue
from gateway.web.api import json_response
from gateway.web.openapi import ApiModel, describe

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
        self._loaded = self.leadership is None
        if self.leadership is not None:
            self.leadership.on_change(self._on_leadership)

    def rebuild(self, swap: PolicySwap) -> None:
        """A new policy revision: new monitors, with the windows of those that stay."""
        configs = parse_monitors(swap.policy_set.sections.get("monitors", []))
        fresh = MonitorSet(configs, on_event=self._emit)
        fresh.restore(self.set.snapshot())
        self.set = fresh
        routes = {r for c in configs for r in c.routes}
        self.all_routes = "*" in routes
        self.routes = frozenset(routes)
        # without monitors the proxy need not hand over any answer at all
        if bool(configs) != self._watching:
            if configs:
                self.gw.events.subscribe(AnswerBody, self.observe)
            else:
                self.gw.events.unsubscribe(AnswerBody, self.observe)
            self._watching = bool(configs)

    def watches(self, route: str) -> bool:
        return bool(self.set.monitors) and (self.all_routes or route in self.routes)

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
            for monitor_id, obs in self.set.parse(route, body):
                self._outgoing.append([monitor_id, route, list(obs), now])
            if len(self._outgoing) > MAX_OUTGOING:
                dropped = len(self._outgoing) - MAX_OUTGOING
                del self._outgoing[:dropped]
                self.dropped.inc(dropped)
        except Exception:  # a monitor must never take requests down
            log.exception("monitor observation failed")

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
