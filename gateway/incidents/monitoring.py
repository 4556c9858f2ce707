"""The windowed monitors, wired into the running gateway.

Decision endpoints (credit scoring, recommendations) answer with a decision
or a score per request. After each non-streamed answer of a monitored route,
the body is handed to the ``MonitorSet`` on the next loop turn, so the
client never waits on it. Events go to the log, to a metric and to
listeners (the incident service subscribes). The windows are saved to the
store every few seconds and at shutdown, and loaded at start, so a restart
keeps them; a policy reload keeps the windows of monitors whose id stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.incidents.monitors import MonitorEvent, MonitorSet, parse_monitors

log = logging.getLogger(__name__)

SAVE_INTERVAL = 5.0


class StoreState:
    """``save_state``/``load_state`` on the gateway's store (the ``kv_state`` table)."""

    def __init__(self, store):
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


class MonitorService:
    def __init__(self, gw):
        self.gw = gw
        self.set = MonitorSet([])
        self.routes: frozenset[str] = frozenset()
        self.all_routes = False
        self.listeners: list = []
        self.state = StoreState(gw.store)
        self._task: asyncio.Task | None = None
        registry = gw.metrics.registry
        self.events = Counter(
            "gateway_monitor_events_total",
            "Monitor rule changes",
            ["monitor", "rule", "state"],
            registry=registry,
        )
        self.values = Gauge(
            "gateway_monitor_value",
            "Latest value of each monitor rule",
            ["monitor", "rule"],
            registry=registry,
        )

    def add_listener(self, listener) -> None:
        self.listeners.append(listener)

    def rebuild(self, policy_set) -> None:
        """A new policy revision: new monitors, with the windows of those that stay."""
        configs = parse_monitors(policy_set.sections.get("monitors", []))
        fresh = MonitorSet(configs, on_event=self._emit)
        fresh.restore(self.set.snapshot())
        self.set = fresh
        routes = {r for c in configs for r in c.routes}
        self.all_routes = "*" in routes
        self.routes = frozenset(routes)

    def watches(self, route: str) -> bool:
        return bool(self.set.monitors) and (self.all_routes or route in self.routes)

    def observe(self, route: str, body: Any) -> None:
        """Hot path: schedule the observation for the next loop turn."""
        asyncio.get_running_loop().call_soon(self._observe, route, body, time.time())

    def _observe(self, route: str, body: Any, now: float) -> None:
        try:
            self.set.observe(route, body, now)
        except Exception:  # a monitor must never take requests down
            log.exception("monitor observation failed")

    def _emit(self, event: MonitorEvent) -> None:
        self.events.labels(event.monitor, event.rule, event.state).inc()
        self.values.labels(event.monitor, event.rule).set(event.value)
        log.warning(
            "monitor %s: %s %s",
            event.monitor,
            event.rule,
            event.state,
            extra={"fields": {"monitor_event": event.as_dict()}},
        )
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("monitor listener failed")

    async def start(self, gw) -> None:
        await self.set.aload(self.state)
        self._task = asyncio.create_task(self._save_loop(), name="monitor-state")

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            try:
                await self.set.asave(self.state)
                for (monitor, rule), value in self.set.gauges().items():
                    self.values.labels(monitor, rule).set(value)
            except Exception as exc:  # the store is down: keep the windows, try again
                log.warning("saving monitor windows failed: %s", exc)

    async def stop(self, gw) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.set.asave(self.state)
        except Exception as exc:
            log.error("could not save monitor windows at shutdown: %s", exc)


def install(gw) -> None:
    service = MonitorService(gw)
    gw.services["monitors"] = service
    gw.policies.swap_listeners.append(service.rebuild)
    gw.on_start.append(service.start)
    gw.on_stop.append(service.stop)


def admin_routes(app) -> None:
    from aiohttp import web

    from gateway.admin import json_response
    from gateway.proxy.state import GATEWAY

    async def status(request: web.Request) -> web.Response:
        service: MonitorService = request.app[GATEWAY].services["monitors"]
        monitors = []
        for mid, mon in service.set.monitors.items():
            monitors.append(
                {
                    "id": mid,
                    "routes": mon.config.routes,
                    "observations": mon.count,
                    "skipped": mon.skipped,
                    "firing": mon.firing,
                    "values": mon.last_values,
                }
            )
        return json_response({"monitors": monitors})

    app.router.add_get("/governance/v1/monitors", status)
