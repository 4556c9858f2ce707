"""The incident book: open incidents and every change to them.

Opening, counting, escalating, resolving and the timeline events each change
causes all happen here, synchronously and under the service's lock; they
only append to a ``Plan``, which the service writes in one transaction. A
timeline event that a sink takes also adds its outbox rows to the plan, so
an event and its deliveries commit together. Containment decisions that an
incident implies (auto-contain on open or escalation, auto-revert on
resolve) are taken here and applied to the ``ContainmentTable``.
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable
from typing import Any

from gateway import severity as sev
from gateway.config import Incidents as IncidentSettings
from gateway.config import Route
from gateway.errors import Conflict
from gateway.incidents.containment import ContainmentTable
from gateway.incidents.metrics import IncidentMetrics
from gateway.incidents.model import TRANSITIONS, Incident, TimelineEvent, new_incident_id
from gateway.incidents.outbox import Outbox
from gateway.incidents.plan import Plan
from gateway.records.containment import MODE_RANK, Mode, Switch

Sample = dict[str, Any]


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "-"


def _format(template: str, values: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(template, (), _Missing(values))
    except (ValueError, IndexError, AttributeError):
        return template


class IncidentBook:
    def __init__(
        self,
        cfg: IncidentSettings,
        routes: list[Route],
        metrics: IncidentMetrics,
        outbox: Outbox,
        table: ContainmentTable,
    ) -> None:
        self.cfg = cfg
        self.routes = {r.name: r for r in routes}
        self.metrics = metrics
        self.outbox = outbox
        self.table = table
        # open incidents by dedup key, and the same objects by id
        self.active: dict[str, Incident] = {}
        self.by_id: dict[str, Incident] = {}
        # rules by id, for their escalation steps
        self.rules: dict[str, Any] = {}

    def load(self, incidents: Iterable[Incident]) -> None:
        for inc in incidents:
            self.active[inc.dedup_key] = inc
            self.by_id[inc.id] = inc

    def link(self, inc: Incident) -> str | None:
        base = self.cfg.public_url
        return f"{base.rstrip('/')}/incidents/{inc.id}" if base else None

    # -- opening and counting ---------------------------------------------------------
    @staticmethod
    def title(rule: Any, attrs: dict[str, str]) -> str:
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

    def open(
        self,
        rule: Any,
        key: str,
        attrs: dict[str, str],
        severity: str,
        signals: list[tuple[float, Sample]],
        plan: Plan,
        *,
        reason: str,
    ) -> Incident:
        first = signals[0][0]
        inc = Incident(
            id=new_incident_id(),
            dedup_key=key,
            title=self.title(rule, attrs)[:300],
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
            self.count(inc, sample, ts, plan, escalate=False)
        self.metrics.opened.labels(severity, rule.source).inc()
        self.event(
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
        self.auto_contain(inc, plan)
        return inc

    def count(
        self, inc: Incident, sample: Sample, ts: float, plan: Plan, *, escalate: bool = True
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
        rule = self.rules.get(inc.rule_id or "")
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
        self.event(
            inc,
            "escalated",
            "gateway",
            f"escalated {before} -> {target}: {n} breaches within {step.window:g}s "
            f"(more than {step.count})",
            plan,
            data={"from": before, "to": target, "breaches": n},
            sink_event="escalate",
        )
        self.auto_contain(inc, plan)

    # -- the timeline ---------------------------------------------------------------------
    def event(
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
            self._notify(inc, event, sink_event, ts, actor, message, plan)
        return event

    def _notify(
        self,
        inc: Incident,
        event: TimelineEvent,
        sink_event: str,
        ts: float,
        actor: str,
        message: str,
        plan: Plan,
    ) -> None:
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

    # -- state changes ----------------------------------------------------------------------
    def set_state(self, inc: Incident, state: str) -> None:
        if state != inc.state and state not in TRANSITIONS[inc.state]:
            raise Conflict(f"incident {inc.id} is {inc.state}; it cannot become {state}")
        inc.state = state

    def resolve(
        self, inc: Incident, actor: str, message: str, plan: Plan, *, ts: float | None = None
    ) -> None:
        self.set_state(inc, "resolved")
        inc.resolved_at = time.time() if ts is None else ts
        self.active.pop(inc.dedup_key, None)
        self.by_id.pop(inc.id, None)
        self.event(inc, "resolved", actor, message, plan, ts=inc.resolved_at, sink_event="resolve")
        for switch in self.table.of_incident(inc.id):
            if switch.auto_revert:
                self.restore(switch.route, "auto", f"incident {inc.id} resolved", plan, inc)

    def tick(self, plan: Plan, now: float) -> None:
        """Resolve incidents quiet for longer than their rule (or the default) allows."""
        for inc in list(self.active.values()):
            if inc.resolve_on_clear:
                continue
            quiet = inc.auto_resolve_after or self.cfg.auto_resolve_after
            if now - inc.last_seen >= quiet:
                self.resolve(inc, "auto", f"no new signals for {quiet:g}s", plan, ts=now)

    # -- containment ----------------------------------------------------------------------------
    def auto_contain(self, inc: Incident, plan: Plan) -> None:
        route = self.routes.get(inc.route or "")
        if route is None:
            return
        cfg = route.containment
        want: Mode | None = None
        for mode, threshold in (
            ("block", cfg.block_on),
            ("review_all", cfg.review_all_on),
            ("fallback", cfg.fallback_on),
        ):
            if threshold is not None and sev.at_least(inc.severity, threshold):
                want = mode  # type: ignore[assignment]
                break
        if want is None:
            return
        current = self.table.switches.get(route.name)
        if current is not None and MODE_RANK[current.mode] >= MODE_RANK[want]:
            return
        self.contain(
            route.name,
            want,
            inc,
            "auto",
            f"{inc.severity} incident {inc.id} on route {route.name}",
            plan,
            auto_revert=cfg.auto_revert,
        )

    def contain(
        self,
        route: str,
        mode: Mode,
        inc: Incident | None,
        actor: str,
        reason: str,
        plan: Plan,
        *,
        auto_revert: bool = False,
    ) -> Switch:
        switch, previous = self.table.turn_on(
            route, mode, inc.id if inc else None, actor, reason, plan, auto_revert=auto_revert
        )
        if inc is not None:
            target = self.routes[route].fallback if mode == "fallback" else None
            detail = {
                "fallback": f"serving route {route} from its fallback {target}",
                "review_all": f"holding every response of route {route} for review",
                "block": f"answering every request of route {route} with the kill-switch message",
            }[mode]
            self.event(
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
                self.set_state(inc, "contained")
            inc.contained_at = inc.contained_at or switch.since
        return switch

    def restore(
        self, route: str, actor: str, reason: str, plan: Plan, inc: Incident | None
    ) -> Switch | None:
        switch = self.table.turn_off(route, actor, plan)
        if switch is not None and inc is not None:
            self.event(
                inc,
                "restored",
                actor,
                f"containment {switch.mode} of route {route} lifted ({reason})",
                plan,
                data={"route": route, "mode": switch.mode},
                sink_event="restore",
            )
        return switch

    def update_gauges(self) -> None:
        counts = dict.fromkeys(sev.SEVERITIES, 0)
        for inc in self.active.values():
            counts[inc.severity] = counts.get(inc.severity, 0) + 1
        for name, n in counts.items():
            self.metrics.open.labels(name).set(n)
