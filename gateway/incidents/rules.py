"""Incident rules: the ``incident_rules:`` section of policy files.

Each rule watches one source of signals and says when an incident opens:

* ``policy``: breaches of matching policies, on the first one of severity at
  least ``min_severity`` or when more than ``threshold.count`` land within
  ``threshold.window`` seconds;
* ``monitor``: events of the windowed monitors (a rule starting to fire);
* ``upstream_errors``: the share of failed upstream attempts on a route;
* ``detector_errors``: policy checks that errored (a check failing open).

Breaches with the same dedup key update one open incident.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, ValidationError

from gateway.errors import ConfigError, Diag, YamlSyntaxError
from gateway.severity import Sev
from gateway.strict import Strict
from gateway.yaml_source import load_source, validation_messages

KeyPart = Literal["policy", "route", "upstream", "model", "monitor", "rule"]

DEFAULT_KEYS: dict[str, list[str]] = {
    "policy": ["policy", "route", "upstream"],
    "detector_errors": ["policy", "route", "upstream"],
    "monitor": ["monitor", "rule", "route"],
    "upstream_errors": ["route", "upstream"],
}


class Threshold(Strict):
    """More than ``count`` events within ``window`` seconds."""

    count: int = Field(ge=0)
    window: float = Field(gt=0)


class Escalation(Strict):
    """Raise the incident to ``severity`` once more than ``count`` breaches land in ``window``."""

    count: int = Field(ge=1)
    window: float = Field(gt=0)
    severity: Sev


class RuleBase(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=100)
    description: str = ""
    # route names (shell globs) this rule watches
    routes: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # the incident's severity; unset takes the policy's (or monitor's) own
    severity: Sev | None = None
    # what makes two signals the same incident
    dedup_key: list[KeyPart] | None = None
    escalate: list[Escalation] = Field(default_factory=list)
    # quiet seconds after which the incident resolves; unset uses the gateway default
    auto_resolve_after: float | None = Field(default=None, gt=0)
    title: str | None = None

    def watches_route(self, route: str) -> bool:
        return any(fnmatch.fnmatchcase(route, g) for g in self.routes)

    def key_parts(self, source: str) -> list[str]:
        return list(self.dedup_key) if self.dedup_key else DEFAULT_KEYS[source]


class PolicyRule(RuleBase):
    source: Literal["policy"]
    # policy ids (shell globs)
    policies: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # policy severity at or above which a breach counts
    min_severity: Sev = "SEV4"
    # unset: the first breach opens the incident
    threshold: Threshold | None = None
    # monitor-mode breaches are the early warning monitor mode exists for
    modes: list[Literal["enforce", "monitor"]] = Field(default=["enforce", "monitor"], min_length=1)

    def watches_policy(self, policy_id: str) -> bool:
        return any(fnmatch.fnmatchcase(policy_id, g) for g in self.policies)


class DetectorErrorRule(RuleBase):
    source: Literal["detector_errors"]
    policies: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    threshold: Threshold | None = None

    def watches_policy(self, policy_id: str) -> bool:
        return any(fnmatch.fnmatchcase(policy_id, g) for g in self.policies)


class MonitorRule(RuleBase):
    source: Literal["monitor"]
    monitors: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # monitor rule names: rejection_rate, disparate_impact, score_drift
    rules: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # resolve when the monitor reports the rule cleared (monitors are edge-triggered,
    # so a quiet period says nothing about them)
    resolve_on_clear: bool = True

    def watches(self, monitor: str, rule: str) -> bool:
        return any(fnmatch.fnmatchcase(monitor, g) for g in self.monitors) and any(
            fnmatch.fnmatchcase(rule, g) for g in self.rules
        )


class UpstreamErrorRule(RuleBase):
    source: Literal["upstream_errors"]
    # share of failed attempts (0-1) within ``window`` that opens an incident
    rate: float = Field(gt=0, le=1)
    window: float = Field(default=60.0, gt=0)
    # too few attempts say nothing about a rate
    min_requests: int = Field(default=20, ge=1)


IncidentRule = PolicyRule | DetectorErrorRule | MonitorRule | UpstreamErrorRule

RULE_KINDS: dict[str, type[IncidentRule]] = {
    "policy": PolicyRule,
    "detector_errors": DetectorErrorRule,
    "monitor": MonitorRule,
    "upstream_errors": UpstreamErrorRule,
}


def parse_rules(sections: Iterable[tuple[str, Any]]) -> list[IncidentRule]:
    """Validate ``incident_rules:`` sections given as ``(file, raw value)`` pairs.

    Every problem in every file is reported at once as ``file:line:col`` lines.
    """
    out: list[IncidentRule] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path, raw in sections:
        source = _source(path)
        if raw is None:
            continue
        if not isinstance(raw, list):
            errors.append(
                _at(
                    source,
                    path,
                    ("incident_rules",),
                    Diag.INVALID_TYPE,
                    "incident_rules: expected a list",
                )
            )
            continue
        for index, item in enumerate(raw):
            base = ("incident_rules", index)
            if not isinstance(item, dict):
                errors.append(
                    _at(
                        source,
                        path,
                        base,
                        Diag.INVALID_TYPE,
                        f"incident_rules[{index}]: expected a mapping",
                    )
                )
                continue
            label = str(item.get("id") or f"incident_rules[{index}]")
            kind = item.get("source")
            model = RULE_KINDS.get(kind) if isinstance(kind, str) else None
            if model is None:
                errors.append(
                    _at(
                        source,
                        path,
                        base + ("source",),
                        Diag.UNKNOWN_KIND,
                        f"{label}.source: {kind!r} (known: {', '.join(RULE_KINDS)})",
                    )
                )
                continue
            try:
                rule = model.model_validate(item)
            except ValidationError as exc:
                if source is None:
                    errors.extend(
                        f"{path}:1:1: {Diag.INVALID_VALUE}: {label}: {e['msg']}"
                        for e in exc.errors()
                    )
                else:
                    errors.extend(
                        validation_messages(
                            source, exc, base=base, label=label, model=model, data=item
                        )
                    )
                continue
            if rule.id in seen:
                where = seen[rule.id]
                errors.append(
                    _at(
                        source,
                        path,
                        base + ("id",),
                        Diag.DUPLICATE_ID,
                        f"incident rule {rule.id!r} is already defined in {where}",
                    )
                )
                continue
            seen[rule.id] = path
            out.append(rule)
    if errors:
        raise ConfigError(f"{len(errors)} error(s) in incident rules", errors)
    return out


def _source(path: str):
    try:
        return load_source(path, keep_duplicates=True)
    except (YamlSyntaxError, OSError):
        return None


def _at(source, path: str, loc: tuple, code: Diag, message: str) -> str:
    if source is None:
        return f"{path}:1:1: {code}: {message}"
    return source.error(loc, code, message)
