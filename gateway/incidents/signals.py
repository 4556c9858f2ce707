"""Signal matching: which decision records and monitor events the incident rules care about.

Each rule turns matching signals into a dedup key and either counts them on
the open incident of that key or, once its threshold is crossed, opens one.
Threshold and upstream-health windows are kept here, per rule and key.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from gateway import severity as sev
from gateway.incidents.book import IncidentBook, Sample
from gateway.incidents.plan import Plan
from gateway.incidents.rules import (
    DetectorErrorRule,
    MonitorRule,
    PolicyRule,
    UpstreamErrorRule,
    parse_rules,
)
from gateway.policy.loader import PolicySet
from gateway.proxy.containment import INTERNAL_PREFIX
from gateway.records.decision import Attempt, DecisionRecord, PolicyVerdict
from gateway.records.monitor import MonitorEvent
from gateway.secretmask import mask_evidence, mask_secrets

log = logging.getLogger(__name__)

# window deques untouched this long are dropped
SWEEP_SECONDS = 60.0


class _HealthWindow:
    """Attempts within a time window, with a running count of the failed ones."""

    __slots__ = ("items", "errors")

    def __init__(self) -> None:
        self.items: deque[tuple[float, Sample | None]] = deque()
        self.errors = 0

    def add(self, ts: float, sample: Sample | None, horizon: float) -> None:
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


def sample_of(rec: DecisionRecord, policy: PolicyVerdict | None) -> Sample:
    """The evidence an incident keeps of one request (and the policy that signalled)."""
    sample: Sample = {
        "decision_id": rec.decision_id,
        "ts": rec.ts,
        "route": rec.route,
        "upstream": rec.upstream,
        "model": rec.model,
        "action": rec.action,
        "chars_released": rec.chars_released,
        "cut": rec.cut,
    }
    if policy is not None:
        sample["policy"] = policy.id
        sample["policy_severity"] = policy.severity
        # masked before cutting, so a cut never leaves a secret unrecognised; the
        # record's evidence is already masked, this keeps samples safe whatever fed them
        if policy.error:
            sample["error"] = mask_secrets(policy.error)[:300]
        if policy.findings:
            first = policy.findings[0]
            sample["finding"] = mask_secrets(first.message)[:300]
            sample["evidence"] = {
                k: (mask_evidence(v, k)[:200] if isinstance(v, str) else v)
                for k, v in list(first.evidence.items())[:8]
                if isinstance(v, str | int | float | bool)
            }
    return sample


# the monitor name of route variants' rollbacks (gateway.canary)
CANARY = "canary"
CANARY_ROLLBACK = MonitorRule(
    id="canary-rollback",
    source="monitor",
    monitors=[CANARY],
    rules=["rollback"],
    title="Route {route}: a variant was rolled back",
    # a rollback is an event, not a condition that clears: it waits for a person
    resolve_on_clear=False,
    auto_resolve_after=30 * 86400.0,
)


class Matcher:
    def __init__(self, book: IncidentBook) -> None:
        self.book = book
        self.rules: list[Any] = []
        self.errors: list[str] = []
        self.policy_rules: list[PolicyRule] = []
        self.detector_rules: list[DetectorErrorRule] = []
        self.monitor_rules: list[MonitorRule] = []
        self.health_rules: list[UpstreamErrorRule] = []
        self._from: PolicySet | None = None
        self._last_sweep = 0.0
        # (rule id, dedup key) -> (ts, sample) still inside the rule's window
        self.windows: dict[tuple[str, str], deque[tuple[float, Sample]]] = {}
        # (rule id, route, upstream) -> attempts inside the rule's window
        self.health: dict[tuple[str, str, str], _HealthWindow] = {}

    # -- rules -----------------------------------------------------------------------------
    def refresh(self, policy_set: PolicySet | None, *, strict: bool = False) -> None:
        """Take the incident rules of ``policy_set``; a bad reload keeps the working ones."""
        if policy_set is None or policy_set is self._from:
            return
        self._from = policy_set
        try:
            rules = parse_rules(policy_set.sections.get("incident_rules", []))
        except Exception as exc:
            if strict:
                raise
            self.errors = list(getattr(exc, "errors", [str(exc)]))
            for line in self.errors:
                log.error("incident rules not reloaded: %s", line)
            return
        if not any(isinstance(r, MonitorRule) and r.watches(CANARY, "rollback") for r in rules):
            # a canary rolled back is always an incident; a rule of the policy files may
            # take it over (its severity, routes, escalations)
            rules = [*rules, CANARY_ROLLBACK]
        self.rules = rules
        self.book.rules = {r.id: r for r in rules}
        self.errors = []
        self.policy_rules = [r for r in rules if isinstance(r, PolicyRule)]
        self.detector_rules = [r for r in rules if isinstance(r, DetectorErrorRule)]
        self.monitor_rules = [r for r in rules if isinstance(r, MonitorRule)]
        self.health_rules = [r for r in rules if isinstance(r, UpstreamErrorRule)]

    @staticmethod
    def key(rule: Any, attrs: dict[str, str]) -> str:
        return "/".join(f"{part}={attrs.get(part, '')}" for part in rule.key_parts(rule.source))

    # -- decision records --------------------------------------------------------------------
    def wants(self, rec: DecisionRecord) -> bool:
        """Whether any rule could count ``rec`` (what is handed to the leader, with a shared store).

        Health rules count every attempt; the others only breaches and errors.
        """
        if self.health_rules and rec.attempts:
            return True
        if not (self.policy_rules or self.detector_rules):
            return False
        return any(
            p.status in ("breach", "error") and not p.id.startswith(INTERNAL_PREFIX)
            for p in rec.policies
        )

    def on_record(self, rec: DecisionRecord, plan: Plan, now: float) -> None:
        ts = rec.ts or now
        if self.health_rules:
            for attempt in rec.attempts:
                if attempt.skipped:
                    continue
                for hrule in self.health_rules:
                    if hrule.watches_route(attempt.route):
                        self._observe_health(hrule, rec, attempt, ts, plan)
        for policy in rec.policies:
            if policy.id.startswith(INTERNAL_PREFIX):
                continue
            rules: list[PolicyRule] | list[DetectorErrorRule]
            if policy.status == "breach":
                rules = self.policy_rules
            elif policy.status == "error":
                rules = self.detector_rules
            else:
                continue
            for rule in rules:
                if not rule.watches_route(rec.route) or not rule.watches_policy(policy.id):
                    continue
                psev = sev.from_policy(policy.severity or "medium")
                if isinstance(rule, PolicyRule):
                    if policy.mode not in rule.modes:
                        continue
                    if not sev.at_least(psev, rule.min_severity):
                        continue
                attrs = {
                    "policy": policy.id,
                    "route": rec.route,
                    "upstream": rec.upstream,
                    "model": rec.model or "",
                    "rule": rule.id,
                    "monitor": "",
                }
                self._signal(
                    rule,
                    self.key(rule, attrs),
                    attrs,
                    rule.severity or psev,
                    sample_of(rec, policy),
                    ts,
                    plan,
                )

    def _observe_health(
        self, rule: UpstreamErrorRule, rec: DecisionRecord, attempt: Attempt, ts: float, plan: Plan
    ) -> None:
        window = self.health.get((rule.id, attempt.route, attempt.upstream))
        if window is None:
            window = self.health[(rule.id, attempt.route, attempt.upstream)] = _HealthWindow()
        # only failures need evidence; successes are kept as bare times
        sample = None
        if attempt.failed:
            sample = dict(
                sample_of(rec, None),
                route=attempt.route,
                upstream=attempt.upstream,
                error=attempt.error or f"HTTP {attempt.status}",
            )
        window.add(ts, sample, ts - rule.window)
        attrs = {
            "policy": "",
            "route": attempt.route,
            "upstream": attempt.upstream,
            "model": "",
            "rule": rule.id,
            "monitor": "",
        }
        key = self.key(rule, attrs)
        inc = self.book.active.get(key)
        if inc is not None:
            if sample is not None:
                self.book.count(inc, sample, ts, plan)
            return
        total, errors = len(window.items), window.errors
        if total < rule.min_requests or errors / total < rule.rate:
            return
        failures = [(t, s) for t, s in window.items if s is not None]
        window.clear()
        self.book.open(
            rule,
            key,
            attrs,
            rule.severity or "SEV2",
            failures,
            plan,
            reason=f"{errors} of {total} upstream attempts failed within "
            f"{rule.window:g}s (threshold {rule.rate:.0%})",
        )

    def _signal(
        self,
        rule: PolicyRule | DetectorErrorRule,
        key: str,
        attrs: dict[str, str],
        severity: str,
        sample: Sample,
        ts: float,
        plan: Plan,
    ) -> None:
        inc = self.book.active.get(key)
        if inc is not None:
            self.book.count(inc, sample, ts, plan)
            return
        threshold = rule.threshold
        if threshold is None:
            self.book.open(
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
        self.book.open(
            rule,
            key,
            attrs,
            severity,
            signals,
            plan,
            reason=f"{len(signals)} {what} of {attrs.get('policy')} within "
            f"{threshold.window:g}s (more than {threshold.count})",
        )

    # -- monitor events ------------------------------------------------------------------------
    def on_monitor(self, ev: MonitorEvent, plan: Plan, now: float) -> None:
        ts = ev.at or now
        for rule in self.monitor_rules:
            if not rule.watches(ev.monitor, ev.rule) or not rule.watches_route(ev.route):
                continue
            attrs = {
                "policy": "",
                "route": ev.route,
                "upstream": "",
                "model": "",
                "rule": ev.rule,
                "monitor": ev.monitor,
            }
            key = self.key(rule, attrs)
            inc = self.book.active.get(key)
            summary = ev.details.get("summary")
            detail = (
                summary
                if isinstance(summary, str)
                else f"monitor {ev.monitor} rule {ev.rule} {ev.state}: "
                f"value {ev.value} against {ev.threshold}"
            )
            sample: Sample = {
                "decision_id": None,
                "ts": ts,
                "route": ev.route,
                "monitor": ev.monitor,
                "rule": ev.rule,
                "value": ev.value,
                "threshold": ev.threshold,
                "details": ev.details,
            }
            if ev.state == "fired":
                if inc is None:
                    inc = self.book.open(
                        rule,
                        key,
                        attrs,
                        rule.severity or sev.from_policy(ev.severity),
                        [(ts, sample)],
                        plan,
                        reason=detail,
                    )
                    inc.resolve_on_clear = rule.resolve_on_clear
                else:
                    self.book.count(inc, sample, ts, plan)
                    self.book.event(
                        inc,
                        "monitor_fired",
                        "monitor",
                        detail,
                        plan,
                        ts=ts,
                        data={"value": ev.value},
                    )
                inc.monitor = {
                    "monitor": ev.monitor,
                    "rule": ev.rule,
                    "value": ev.value,
                    "threshold": ev.threshold,
                    "details": ev.details,
                }
            elif inc is not None and rule.resolve_on_clear:
                self.book.resolve(inc, "monitor", detail, plan, ts=ts)

    # -- housekeeping -------------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Drop windows nothing has touched for longer than any rule looks back."""
        if now - self._last_sweep < SWEEP_SECONDS:
            return
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
