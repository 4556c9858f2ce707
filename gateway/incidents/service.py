"""Incidents: raised from decision records and monitor events, off the hot path.

The request path only appends each decision record to a queue
(``on_decision``). A background task drains it in batches, runs the
incident rules over it, updates the open incidents held in memory, and
writes everything one batch caused (incident rows, timeline events, outbox
rows, containment switches) in one store transaction. Containment takes
effect in memory before that write, so the very next request sees it.
"""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.errors import BadRequest, Conflict, NotFound
from gateway.incidents import severity as sev
from gateway.incidents.containment import INTERNAL_PREFIX, MODE_RANK, MODES, Switch
from gateway.incidents.model import (
    ACTIVE_STATES,
    TRANSITIONS,
    Incident,
    TimelineEvent,
    new_incident_id,
)
from gateway.incidents.outbox import Outbox
from gateway.incidents.rules import (
    DetectorErrorRule,
    MonitorRule,
    PolicyRule,
    UpstreamErrorRule,
    parse_rules,
)
from gateway.store.base import Statement

log = logging.getLogger(__name__)

MAX_QUEUE = 100_000
# records handled per turn of the event loop: a breach storm must not stall
# the requests sharing the loop for more than a few milliseconds at a time
MAX_BATCH = 256
# window deques untouched this long are dropped
SWEEP_SECONDS = 60.0


class IncidentMetrics:
    def __init__(self, registry) -> None:
        r = registry
        self.opened = Counter(
            "gateway_incidents_opened_total", "Incidents opened", ["severity", "source"], registry=r
        )
        self.open = Gauge(
            "gateway_incidents_active", "Incidents not yet resolved", ["severity"], registry=r
        )
        self.events = Counter(
            "gateway_incident_events_total", "Incident timeline events", ["kind"], registry=r
        )
        self.containment = Gauge(
            "gateway_route_containment",
            "1 while a route is contained in this mode",
            ["route", "mode"],
            registry=r,
        )
        self.switches = Counter(
            "gateway_containment_switches_total",
            "Containment switches turned on or off",
            ["route", "mode", "change", "actor"],
            registry=r,
        )
        self.contained_requests = Counter(
            "gateway_contained_requests_total",
            "Requests answered under containment",
            ["route", "mode"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "gateway_incident_outbox_pending", "Incident events waiting for delivery", registry=r
        )
        self.deliveries = Counter(
            "gateway_incident_deliveries_total",
            "Incident event deliveries by outcome",
            ["sink", "outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "gateway_incident_queue_dropped_total",
            "Signals dropped because the incident queue was full",
            registry=r,
        )


@dataclass
class Plan:
    """Everything one batch (or one API call) writes, in one transaction."""

    dirty: dict[str, Incident] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    outbox: bool = False

    def merge(self, other: Plan) -> None:
        self.dirty.update(other.dirty)
        self.statements.extend(other.statements)
        self.outbox = self.outbox or other.outbox

    def all(self) -> list[Statement]:
        return self.statements + [inc.upsert() for inc in self.dirty.values()]

    def __bool__(self) -> bool:
        return bool(self.dirty or self.statements)


class _HealthWindow:
    """Attempts within a time window, with a running count of the failed ones."""

    __slots__ = ("items", "errors")

    def __init__(self) -> None:
        self.items: deque[tuple[float, dict[str, Any] | None]] = deque()
        self.errors = 0

    def add(self, ts: float, sample: dict[str, Any] | None, horizon: float) -> None:
        self.items.append((ts, sample))
        self.errors += sample is not None
        while self.items and self.items[0][0] <= horizon:
            _, old = self.items.popleft()
            self.errors -= old is not None

    def clear(self) -> None:
        self.items.clear()
        self.errors = 0

    def __bool__(self) -> bool:
        return bool(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "-"


def _format(template: str, values: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(template, (), _Missing(values))
    except (ValueError, IndexError, AttributeError):
        return template


class IncidentService:
    """The ``incidents`` service of a gateway (``gw.services["incidents"]``)."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.cfg = gw.settings.incidents
        self.store = gw.store
        self.metrics = IncidentMetrics(gw.metrics.registry)
        self.outbox = Outbox(gw.store, self.cfg, self.metrics)
        self.queue: deque[tuple[str, Any]] = deque()
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._halt = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._sender: asyncio.Task | None = None
        self._unwritten = Plan()
        self._last_sweep = 0.0
        # open incidents by dedup key, and the same objects by id
        self.active: dict[str, Incident] = {}
        self.by_id: dict[str, Incident] = {}
        # containment in force, by route; read by the request handler
        self.switches: dict[str, Switch] = {}
        self.rules: list[Any] = []
        self.rules_by_id: dict[str, Any] = {}
        self.rule_errors: list[str] = []
        self._rules_from: Any = None
        # (rule id, dedup key) -> deque of (ts, sample) still inside the rule's window
        self.windows: dict[tuple[str, str], deque] = {}
        # (rule id, route, upstream) -> attempts inside the rule's window
        self.health: dict[tuple[str, str, str], _HealthWindow] = {}

    # -- the hot path: O(1), no I/O ----------------------------------------------------
    def on_decision(self, record: dict[str, Any]) -> None:
        self._put(("decision", record))

    def on_monitor_event(self, event: Any) -> None:
        """Take a monitor event (a ``MonitorEvent`` or its dict); safe from any thread."""
        data = event.as_dict() if hasattr(event, "as_dict") else dict(event)
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(self._put, ("monitor", data))
        else:
            self._put(("monitor", data))

    def _put(self, item: tuple[str, Any]) -> None:
        if len(self.queue) >= MAX_QUEUE:
            self.queue.popleft()
            self.metrics.dropped.inc()
        self.queue.append(item)
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, gw) -> None:
        self._loop = asyncio.get_running_loop()
        self._refresh_rules(strict=True)
        for row in await self.store.fetchall(
            "SELECT * FROM incidents WHERE state IN (?, ?, ?)", *ACTIVE_STATES
        ):
            inc = Incident.from_row(row)
            self.active[inc.dedup_key] = inc
            self.by_id[inc.id] = inc
        for row in await self.store.fetchall("SELECT * FROM route_containment"):
            switch = Switch.from_row(row)
            if self._route(switch.route) is None:
                log.warning("containment of unknown route %s ignored", switch.route)
                continue
            self._bind(switch)
            self.switches[switch.route] = switch
            self.metrics.containment.labels(switch.route, switch.mode).set(1)
            log.warning(
                "route %s is contained (%s) since %s by %s",
                switch.route,
                switch.mode,
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(switch.since)),
                switch.actor,
            )
        self._update_gauges()
        self._task = asyncio.create_task(self._run(), name="incidents")
        self._sender = asyncio.create_task(self.outbox.run(), name="incident-outbox")
        monitors = gw.services.get("monitors")
        if monitors is not None:
            if hasattr(monitors, "add_listener"):
                monitors.add_listener(self.on_monitor_event)
            elif getattr(monitors, "on_event", False) is None:
                monitors.on_event = self.on_monitor_event

    async def stop(self, gw) -> None:
        self._stopping = True
        self._halt.set()
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("incident processing failed at shutdown")
        try:
            await self.settle()
        except Exception as exc:
            log.error("incident events not written at shutdown: %s", exc)
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self.outbox.close()

    async def _run(self) -> None:
        backoff = self.cfg.tick
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.tick)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.process()
                backoff = self.cfg.tick
            except Exception as exc:  # the store is down: the plan is kept and retried
                log.warning("incident state not written, will retry: %s", exc)
                backoff = min(backoff * 2, 10.0)
                try:
                    # a shutdown cuts the pause short
                    await asyncio.wait_for(self._halt.wait(), backoff)
                except TimeoutError:
                    pass

    # -- rules --------------------------------------------------------------------------------
    def _refresh_rules(self, strict: bool = False) -> None:
        current = self.gw.policies.current
        if current is None or current is self._rules_from:
            return
        self._rules_from = current
        try:
            rules = parse_rules(current.sections.get("incident_rules", []))
        except Exception as exc:
            errors = getattr(exc, "errors", [str(exc)])
            if strict:
                raise
            # a bad reload keeps the rules that were working
            self.rule_errors = errors
            for line in errors:
                log.error("incident rules not reloaded: %s", line)
            return
        self.rules = rules
        self.rules_by_id = {r.id: r for r in rules}
        self.rule_errors = []
        self.policy_rules = [r for r in rules if isinstance(r, PolicyRule)]
        self.detector_rules = [r for r in rules if isinstance(r, DetectorErrorRule)]
        self.monitor_rules = [r for r in rules if isinstance(r, MonitorRule)]
        self.health_rules = [r for r in rules if isinstance(r, UpstreamErrorRule)]

    policy_rules: list[PolicyRule] = []
    detector_rules: list[DetectorErrorRule] = []
    monitor_rules: list[MonitorRule] = []
    health_rules: list[UpstreamErrorRule] = []

    # -- processing ----------------------------------------------------------------------------
    async def process(self) -> None:
        """Drain the queue, apply the rules and the quiet-period checks, write the result."""
        async with self.lock:
            self._refresh_rules()
            now = time.time()
            plan = Plan()
            n = min(len(self.queue), MAX_BATCH)
            for _ in range(n):
                kind, item = self.queue.popleft()
                try:
                    if kind == "decision":
                        self._on_record(item, plan, now)
                    else:
                        self._on_monitor(item, plan, now)
                except Exception:
                    log.exception("incident rules failed on a %s", kind)
            self._tick(plan, now)
            await self._write(plan)
        if self.queue:
            self._wake.set()

    async def _write(self, plan: Plan) -> None:
        pending = self._unwritten
        pending.merge(plan)
        if not pending:
            return
        statements = pending.all()
        await self.store.transaction(statements)
        self._unwritten = Plan()
        self._update_gauges()
        if pending.outbox:
            self.outbox.wake()

    def _sample(self, rec: dict[str, Any], policy: dict[str, Any] | None) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "decision_id": rec.get("decision_id"),
            "ts": rec.get("ts"),
            "route": rec.get("route"),
            "upstream": rec.get("upstream"),
            "model": rec.get("model"),
            "action": rec.get("action"),
            "chars_released": rec.get("chars_released") or 0,
            "cut": bool(rec.get("cut")),
        }
        if policy is not None:
            sample["policy"] = policy.get("id")
            sample["policy_severity"] = policy.get("severity")
            if policy.get("error"):
                sample["error"] = str(policy["error"])[:300]
            findings = policy.get("findings") or []
            if findings:
                first = findings[0]
                sample["finding"] = str(first.get("message") or "")[:300]
                evidence = first.get("evidence") or {}
                sample["evidence"] = {
                    k: (v[:200] if isinstance(v, str) else v)
                    for k, v in list(evidence.items())[:8]
                    if isinstance(v, str | int | float | bool)
                }
        return sample

    def _on_record(self, rec: dict[str, Any], plan: Plan, now: float) -> None:
        ts = float(rec.get("ts") or now)
        route = rec.get("route") or ""
        upstream = rec.get("upstream") or ""
        if self.health_rules:
            for attempt in rec.get("attempts") or []:
                if attempt.get("skipped"):
                    continue
                failed = bool(attempt.get("error")) or (attempt.get("status") or 0) >= 500
                for hrule in self.health_rules:
                    if hrule.watches_route(attempt.get("route") or ""):
                        self._observe_health(hrule, rec, attempt, failed, ts, plan)
        for policy in rec.get("policies") or ():
            status = policy.get("status")
            pid = policy.get("id") or ""
            if pid.startswith(INTERNAL_PREFIX):
                continue
            rules: list[PolicyRule] | list[DetectorErrorRule]
            if status == "breach":
                rules = self.policy_rules
            elif status == "error":
                rules = self.detector_rules
            else:
                continue
            for rule in rules:
                if not rule.watches_route(route) or not rule.watches_policy(pid):
                    continue
                psev = sev.from_policy(policy.get("severity") or "medium")
                if isinstance(rule, PolicyRule):
                    if policy.get("mode") not in rule.modes:
                        continue
                    if not sev.at_least(psev, rule.min_severity):
                        continue
                attrs = {
                    "policy": pid,
                    "route": route,
                    "upstream": upstream,
                    "model": rec.get("model") or "",
                    "rule": rule.id,
                    "monitor": "",
                }
                key = self._key(rule, attrs)
                self._signal(
                    rule, key, attrs, rule.severity or psev, self._sample(rec, policy), ts, plan
                )

    def _observe_health(
        self, rule: UpstreamErrorRule, rec, attempt, failed: bool, ts: float, plan: Plan
    ) -> None:
        route = attempt.get("route") or ""
        upstream = attempt.get("upstream") or ""
        window = self.health.get((rule.id, route, upstream))
        if window is None:
            window = self.health[(rule.id, route, upstream)] = _HealthWindow()
        # only failures need evidence; successes are kept as bare times
        sample = None
        if failed:
            sample = dict(
                self._sample(rec, None),
                route=route,
                upstream=upstream,
                error=attempt.get("error") or f"HTTP {attempt.get('status')}",
            )
        window.add(ts, sample, ts - rule.window)
        attrs = {
            "policy": "",
            "route": route,
            "upstream": upstream,
            "model": "",
            "rule": rule.id,
            "monitor": "",
        }
        key = self._key(rule, attrs)
        inc = self.active.get(key)
        if inc is not None:
            if sample is not None:
                self._count(inc, sample, ts, plan)
            return
        total, errors = len(window.items), window.errors
        if total < rule.min_requests or errors / total < rule.rate:
            return
        failures = [(t, s) for t, s in window.items if s is not None]
        window.clear()
        self._open(
            rule,
            key,
            attrs,
            rule.severity or "SEV2",
            failures,
            plan,
            reason=f"{errors} of {total} upstream attempts failed within "
            f"{rule.window:g}s (threshold {rule.rate:.0%})",
        )

    def _on_monitor(self, ev: dict[str, Any], plan: Plan, now: float) -> None:
        ts = float(ev.get("at") or now)
        route = ev.get("route") or ""
        for rule in self.monitor_rules:
            if not rule.watches(ev.get("monitor", ""), ev.get("rule", "")):
                continue
            if not rule.watches_route(route):
                continue
            attrs = {
                "policy": "",
                "route": route,
                "upstream": "",
                "model": "",
                "rule": ev.get("rule", ""),
                "monitor": ev.get("monitor", ""),
            }
            key = self._key(rule, attrs)
            inc = self.active.get(key)
            detail = (
                f"monitor {ev.get('monitor')} rule {ev.get('rule')} {ev.get('state')}: "
                f"value {ev.get('value')} against {ev.get('threshold')}"
            )
            sample = {
                "decision_id": None,
                "ts": ts,
                "route": route,
                "monitor": ev.get("monitor"),
                "rule": ev.get("rule"),
                "value": ev.get("value"),
                "threshold": ev.get("threshold"),
                "details": ev.get("details") or {},
            }
            if ev.get("state") == "fired":
                if inc is None:
                    inc = self._open(
                        rule,
                        key,
                        attrs,
                        rule.severity or sev.from_policy(ev.get("severity", "high")),
                        [(ts, sample)],
                        plan,
                        reason=detail,
                    )
                    inc.resolve_on_clear = rule.resolve_on_clear
                else:
                    self._count(inc, sample, ts, plan)
                    self._event(
                        inc,
                        "monitor_fired",
                        "monitor",
                        detail,
                        plan,
                        ts=ts,
                        data={"value": ev.get("value")},
                    )
                inc.monitor = {
                    "monitor": ev.get("monitor"),
                    "rule": ev.get("rule"),
                    "value": ev.get("value"),
                    "threshold": ev.get("threshold"),
                    "details": ev.get("details") or {},
                }
            elif inc is not None and rule.resolve_on_clear:
                self._resolve(inc, "monitor", detail, plan, ts=ts)

    def _key(self, rule, attrs: dict[str, str]) -> str:
        return "/".join(f"{part}={attrs.get(part, '')}" for part in rule.key_parts(rule.source))

    # -- incident changes (synchronous: they run under the lock, before the write) --------
    def _signal(
        self,
        rule,
        key: str,
        attrs: dict[str, str],
        severity: str,
        sample: dict[str, Any],
        ts: float,
        plan: Plan,
    ) -> None:
        inc = self.active.get(key)
        if inc is not None:
            self._count(inc, sample, ts, plan)
            return
        threshold = getattr(rule, "threshold", None)
        if threshold is None:
            self._open(
                rule,
                key,
                attrs,
                severity,
                [(ts, sample)],
                plan,
                reason=f"first breach of {attrs.get('policy') or rule.id}",
            )
            return
        window = self.windows.setdefault((rule.id, key), deque())
        window.append((ts, sample))
        while window and window[0][0] <= ts - threshold.window:
            window.popleft()
        if len(window) <= threshold.count:
            return
        signals = list(window)
        window.clear()
        what = "breaches" if rule.source == "policy" else "detector errors"
        self._open(
            rule,
            key,
            attrs,
            severity,
            signals,
            plan,
            reason=f"{len(signals)} {what} of {attrs.get('policy')} within "
            f"{threshold.window:g}s (more than {threshold.count})",
        )

    def _title(self, rule, attrs: dict[str, str]) -> str:
        if rule.title:
            return _format(rule.title, attrs)
        where = f" on route {attrs['route']}" if attrs.get("route") else ""
        if rule.source == "policy":
            return f"Policy {attrs['policy']} breached{where}"
        if rule.source == "detector_errors":
            return f"Policy {attrs['policy']} check failing{where}"
        if rule.source == "monitor":
            return f"Monitor {attrs['monitor']}: {attrs['rule']}{where}"
        return f"Upstream {attrs.get('upstream') or '?'} failing{where}"

    def _open(
        self,
        rule,
        key: str,
        attrs: dict[str, str],
        severity: str,
        signals: list[tuple[float, dict[str, Any]]],
        plan: Plan,
        *,
        reason: str,
    ) -> Incident:
        first = signals[0][0]
        inc = Incident(
            id=new_incident_id(),
            dedup_key=key,
            title=self._title(rule, attrs)[:300],
            severity=severity,
            state="open",
            source=rule.source,
            rule_id=rule.id,
            route=attrs.get("route") or None,
            upstream=attrs.get("upstream") or None,
            policy=attrs.get("policy") or None,
            opened_at=time.time(),
            first_seen=first,
            last_seen=first,
            auto_resolve_after=rule.auto_resolve_after,
        )
        self.active[key] = inc
        self.by_id[inc.id] = inc
        for ts, sample in signals:
            self._count(inc, sample, ts, plan, escalate=False)
        self.metrics.opened.labels(severity, rule.source).inc()
        self._event(
            inc,
            "opened",
            "gateway",
            f"{inc.severity} opened by rule {rule.id}: {reason}",
            plan,
            ts=first,
            data={
                "rule": rule.id,
                "severity": severity,
                "source": rule.source,
                "reason": reason,
                "breaches": len(signals),
            },
            sink_event="trigger",
        )
        self._escalate_if_needed(inc, plan)
        self._auto_contain(inc, plan)
        return inc

    def _count(
        self, inc: Incident, sample: dict[str, Any], ts: float, plan: Plan, *, escalate: bool = True
    ) -> None:
        inc.count(ts)
        decision = sample.get("decision_id")
        if decision is None or decision != inc.last_decision:
            inc.requests += 1
            inc.last_decision = decision
            if sample.get("action"):
                inc.by_action[sample["action"]] = inc.by_action.get(sample["action"], 0) + 1
            inc.chars_released += int(sample.get("chars_released") or 0)
            inc.cuts += 1 if sample.get("cut") else 0
        name = sample.get("policy") or sample.get("monitor") or sample.get("error") or inc.source
        inc.by_policy[name] = inc.by_policy.get(name, 0) + 1
        if len(inc.samples) < self.cfg.samples:
            inc.samples.append(sample)
        inc.recent.append(ts)
        plan.dirty[inc.id] = inc
        if escalate:
            self._escalate_if_needed(inc, plan)

    def _escalate_if_needed(self, inc: Incident, plan: Plan) -> None:
        rule = self.rules_by_id.get(inc.rule_id or "")
        steps = getattr(rule, "escalate", None)
        if not steps:
            inc.recent.clear()
            return
        horizon = max(s.window for s in steps)
        latest = inc.recent[-1] if inc.recent else inc.last_seen
        inc.recent = [t for t in inc.recent if t > latest - horizon]
        target = inc.severity
        hit = None
        for step in steps:
            n = sum(1 for t in inc.recent if t > latest - step.window)
            if n > step.count and sev.rank(step.severity) > sev.rank(target):
                target, hit = step.severity, (step, n)
        if hit is None:
            return
        step, n = hit
        before = inc.severity
        inc.severity = target
        self._event(
            inc,
            "escalated",
            "gateway",
            f"escalated {before} -> {target}: {n} breaches within {step.window:g}s "
            f"(more than {step.count})",
            plan,
            data={"from": before, "to": target, "breaches": n},
            sink_event="escalate",
        )
        self._auto_contain(inc, plan)

    def _event(
        self,
        inc: Incident,
        kind: str,
        actor: str,
        message: str,
        plan: Plan,
        *,
        ts: float | None = None,
        data: dict[str, Any] | None = None,
        sink_event: str | None = None,
    ) -> TimelineEvent:
        ts = time.time() if ts is None else ts
        event = TimelineEvent(inc.id, inc.next_seq, ts, kind, actor, message, data or {})
        inc.next_seq += 1
        plan.statements.append(event.insert())
        plan.dirty[inc.id] = inc
        self.metrics.events.labels(kind).inc()
        if sink_event is not None:
            for sink in self.cfg.sinks:
                kind = sink_event
                if sink_event in ("trigger", "escalate"):
                    if not sev.at_least(inc.severity, sink.min_severity):
                        continue
                    # a sink first hears of an incident as it crosses its threshold
                    if sink.name not in inc.notified:
                        kind = "trigger"
                        inc.notified.append(sink.name)
                elif sink.name not in inc.notified:
                    # nothing to acknowledge or resolve where nothing was raised
                    continue
                rows = self.outbox.rows(
                    inc,
                    event.seq,
                    kind,
                    ts=ts,
                    actor=actor,
                    message=message,
                    url=self.link(inc),
                    sinks=[sink.name],
                )
                if rows:
                    plan.statements.extend(rows)
                    plan.outbox = True
        return event

    def link(self, inc: Incident) -> str | None:
        base = self.cfg.public_url
        return f"{base.rstrip('/')}/incidents/{inc.id}" if base else None

    def _set_state(self, inc: Incident, state: str) -> None:
        if state != inc.state and state not in TRANSITIONS[inc.state]:
            raise Conflict(f"incident {inc.id} is {inc.state}; it cannot become {state}")
        inc.state = state

    def _resolve(
        self, inc: Incident, actor: str, message: str, plan: Plan, *, ts: float | None = None
    ) -> None:
        self._set_state(inc, "resolved")
        inc.resolved_at = time.time() if ts is None else ts
        self.active.pop(inc.dedup_key, None)
        self.by_id.pop(inc.id, None)
        self._event(inc, "resolved", actor, message, plan, ts=inc.resolved_at, sink_event="resolve")
        for switch in list(self.switches.values()):
            if switch.incident_id == inc.id and switch.auto_revert:
                self._restore(switch.route, "auto", f"incident {inc.id} resolved", plan, inc)

    def _tick(self, plan: Plan, now: float) -> None:
        for inc in list(self.active.values()):
            if inc.resolve_on_clear:
                continue
            quiet = inc.auto_resolve_after or self.cfg.auto_resolve_after
            if now - inc.last_seen >= quiet:
                self._resolve(inc, "auto", f"no new signals for {quiet:g}s", plan, ts=now)
        if now - self._last_sweep >= SWEEP_SECONDS:
            self._last_sweep = now
            horizon = max(
                [
                    getattr(getattr(r, "threshold", None), "window", 0) or getattr(r, "window", 0)
                    for r in self.rules
                ]
                + [SWEEP_SECONDS]
            )
            cutoff = now - horizon
            for key in [k for k, dq in self.windows.items() if not dq or dq[-1][0] < cutoff]:
                del self.windows[key]
            for hkey in [k for k, w in self.health.items() if not w or w[-1][0] < cutoff]:
                del self.health[hkey]

    # -- containment ---------------------------------------------------------------------------
    def _route(self, name: str | None):
        for route in self.gw.settings.routes:
            if route.name == name:
                return route
        return None

    def _bind(self, switch: Switch) -> None:
        switch.counter = self.metrics.contained_requests.labels(switch.route, switch.mode)

    def _auto_contain(self, inc: Incident, plan: Plan) -> None:
        route = self._route(inc.route)
        if route is None:
            return
        cfg = route.containment
        want = None
        for mode, threshold in (
            ("block", cfg.block_on),
            ("review_all", cfg.review_all_on),
            ("fallback", cfg.fallback_on),
        ):
            if threshold is not None and sev.at_least(inc.severity, threshold):
                want = mode
                break
        if want is None:
            return
        current = self.switches.get(route.name)
        if current is not None and MODE_RANK[current.mode] >= MODE_RANK[want]:
            return
        self._contain(
            route.name,
            want,
            inc,
            "auto",
            f"{inc.severity} incident {inc.id} on route {route.name}",
            plan,
            auto_revert=cfg.auto_revert,
        )

    def _contain(
        self,
        route: str,
        mode: str,
        inc: Incident | None,
        actor: str,
        reason: str,
        plan: Plan,
        *,
        auto_revert: bool = False,
    ) -> Switch:
        previous = self.switches.get(route)
        switch = Switch(
            route, mode, inc.id if inc else None, actor, reason, time.time(), auto_revert
        )
        self._bind(switch)
        # in force from here on, before anything is written
        self.switches[route] = switch
        if previous is not None:
            self.metrics.containment.labels(route, previous.mode).set(0)
        self.metrics.containment.labels(route, mode).set(1)
        self.metrics.switches.labels(
            route, mode, "on", "auto" if actor == "auto" else "manual"
        ).inc()
        plan.statements.append(switch.upsert())
        if inc is not None:
            target = self._fallback_name(route) if mode == "fallback" else None
            detail = {
                "fallback": f"serving route {route} from its fallback {target}",
                "review_all": f"holding every response of route {route} for review",
                "block": f"answering every request of route {route} with the kill-switch message",
            }[mode]
            self._event(
                inc,
                "contained",
                actor,
                f"containment {mode}: {detail} ({reason})",
                plan,
                data={
                    "route": route,
                    "mode": mode,
                    "fallback": target,
                    "previous": previous.mode if previous else None,
                },
                sink_event="contain",
            )
            if inc.active and inc.state != "contained":
                self._set_state(inc, "contained")
            inc.contained_at = inc.contained_at or switch.since
        return switch

    def _fallback_name(self, route: str) -> str | None:
        r = self._route(route)
        return r.fallback if r else None

    def _restore(
        self, route: str, actor: str, reason: str, plan: Plan, inc: Incident | None
    ) -> Switch | None:
        switch = self.switches.pop(route, None)
        if switch is None:
            return None
        self.metrics.containment.labels(route, switch.mode).set(0)
        self.metrics.switches.labels(
            route, switch.mode, "off", "auto" if actor == "auto" else "manual"
        ).inc()
        plan.statements.append(("DELETE FROM route_containment WHERE route = ?", (route,)))
        if inc is not None:
            self._event(
                inc,
                "restored",
                actor,
                f"containment {switch.mode} of route {route} lifted ({reason})",
                plan,
                data={"route": route, "mode": switch.mode},
                sink_event="restore",
            )
        return switch

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(sev.SEVERITIES, 0)
        for inc in self.active.values():
            counts[inc.severity] = counts.get(inc.severity, 0) + 1
        for name, n in counts.items():
            self.metrics.open.labels(name).set(n)

    # -- the API's operations -----------------------------------------------------------------
    async def get(self, incident_id: str) -> Incident:
        inc = self.by_id.get(incident_id)
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
        out = []
        for row in rows:
            # the in-memory copy is ahead of the row between two batch writes
            inc = self.by_id.get(row["id"]) or Incident.from_row(row)
            out.append(inc.summary())
        return out

    async def _mutate(self, incident_id: str, change) -> Incident:
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
                self._set_state(inc, "acknowledged")
            self._event(
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
            self._event(inc, "note", actor, text[:10_000], plan, sink_event="note")

        return await self._mutate(incident_id, change)

    async def mark_contained(self, incident_id: str, actor: str, note: str = "") -> Incident:
        def change(inc: Incident, plan: Plan) -> None:
            if inc.state == "contained":
                raise Conflict(f"incident {inc.id} is already contained")
            self._set_state(inc, "contained")
            inc.contained_at = time.time()
            self._event(
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
            self._resolve(inc, actor, note or f"resolved by {actor}", plan)

        return await self._mutate(incident_id, change)

    async def postmortem_done(self, incident_id: str, actor: str) -> Incident:
        def change(inc: Incident, plan: Plan) -> None:
            self._set_state(inc, "postmortem_done")
            self._event(inc, "postmortem_done", actor, f"post-mortem completed by {actor}", plan)

        return await self._mutate(incident_id, change)

    async def link_review(self, incident_id: str, review_id: str, actor: str) -> Incident:
        review_id = review_id.strip()
        if not review_id or len(review_id) > 200:
            raise BadRequest("review_item must be a non-empty id")

        def change(inc: Incident, plan: Plan) -> None:
            if review_id in inc.review_items:
                return
            inc.review_items.append(review_id)
            self._event(
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
        r = self._route(route)
        if r is None:
            raise NotFound(f"no route named {route!r}")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}")
        if mode == "fallback" and not r.fallback:
            raise Conflict(f"route {route} has no fallback route to switch to")
        async with self.lock:
            plan = Plan()
            inc = await self.get(incident_id) if incident_id else None
            switch = self._contain(
                route, mode, inc, actor, reason or f"manual, by {actor}", plan, auto_revert=False
            )
            await self._write(plan)
            return switch

    async def restore_route(self, route: str, actor: str, reason: str = "") -> Switch:
        if self._route(route) is None:
            raise NotFound(f"no route named {route!r}")
        async with self.lock:
            switch = self.switches.get(route)
            if switch is None:
                raise Conflict(f"route {route} is not contained")
            inc = None
            if switch.incident_id:
                try:
                    inc = await self.get(switch.incident_id)
                except NotFound:
                    inc = None
            plan = Plan()
            self._restore(route, actor, reason or f"restored by {actor}", plan, inc)
            await self._write(plan)
            return switch

    async def settle(self) -> None:
        """Process everything queued so far (the API reads after it, and tests wait on it)."""
        await self.process()
        while self.queue:
            await self.process()


def install(gw) -> None:
    """Register the incident service, its decision listener and its background tasks."""
    service = IncidentService(gw)
    gw.services["incidents"] = service
    gw.decision_listeners.append(service.on_decision)
    gw.on_start.append(service.start)
    gw.on_stop.append(service.stop)


def admin_routes(app) -> None:
    from gateway.incidents.api import install_routes

    install_routes(app)
