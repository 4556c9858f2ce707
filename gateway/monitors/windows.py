"""Windowed monitors for decision endpoints (credit scoring, recommendations…).

Per route, each response yields a decision (approved or rejected), an
optional cohort and an optional score, read by JSON path. A monitor keeps
two count-based windows: the ``window`` most recent observations and a
``baseline`` of older ones (``trailing``: the observations just before the
window; ``fixed``: the first ones ever seen). Three rules compare them:

* ``rejection_rate``: the window's rejection rate rose by at least
  ``min_rise`` over the baseline's (relative, 0.4 = +40%, or absolute);
* ``disparate_impact``: a cohort's approval rate in the window divided by
  the best cohort's is below ``min_ratio`` (0.8, the four-fifths rule);
* ``score_drift``: the window's score distribution moved from the
  baseline's (population stability index or Kolmogorov-Smirnov statistic).

Outcome monitors (``OutcomeMonitor``) count feedback events instead of
answers (clicks, acceptances, repayments, thumbs down, labels; see
``feedback.py``) with the same windows, and three rules:

* ``outcome_rate``: the share of events whose outcome happened fell (or
  rose) by at least ``min_drop`` (``min_rise``) against the baseline;
* ``outcome_cohorts``: a cohort's outcome rate over the best cohort's;
* ``label_disagreement``: a policy's labelled false positives and misses.

Monitors never block a response. A rule emits an event when it starts
firing and another when it clears (edge-triggered, so a sustained problem
is one incident, not one per request). Window state is a plain dict that a
``StateStore`` saves and loads, so a restart keeps it.

Declared in YAML beside the policies, under a top-level ``monitors:`` key.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field, ValidationError, model_validator

from gateway.errors import ConfigError, Diag, YamlSyntaxError
from gateway.records.monitor import MonitorEvent
from gateway.strict import Strict
from gateway.yaml_source import load_source, validation_messages

STATE_VERSION = 1


_PATH = re.compile(r"^\$?(?:\.?[A-Za-z_][\w-]*|\[\d+\]|\[\"[^\"]+\"\])+$")


class FieldSpec(Strict):
    # "decision", "result.decision", "$.choices[0].message.score"
    path: str

    @model_validator(mode="after")
    def _valid_path(self) -> FieldSpec:
        if not _PATH.match(self.path):
            raise ValueError(f"{self.path!r} is not a JSON path like 'result.decision' or 'a[0].b'")
        return self


_REJECTED: list[str | int | float | bool] = ["rejected"]


class DecisionSpec(FieldSpec):
    # values meaning "rejected"; anything else counts as approved, unless
    # approve_values is given, in which case other values are skipped
    reject_values: list[str | int | float | bool] = Field(default_factory=lambda: _REJECTED)
    approve_values: list[str | int | float | bool] | None = None


class RejectionRateRule(Strict):
    min_rise: float = Field(default=0.4, gt=0.0)
    relative: bool = True


class DisparateImpactRule(Strict):
    min_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    # a cohort with fewer observations in the window is not judged
    min_cohort_samples: int = Field(default=30, ge=1)


class ScoreDriftRule(Strict):
    method: Literal["psi", "ks"] = "psi"
    # PSI above 0.2 is the usual "significant shift"; KS is a distance in [0, 1]
    threshold: float = Field(default=0.2, gt=0.0)
    bins: int = Field(default=10, ge=2, le=100)
    # drift is recomputed every this many observations (it sorts the windows)
    every: int = Field(default=10, ge=1)


# what a client may report about an answer after it was given (docs/feedback.md)
OutcomeType = Literal["click", "acceptance", "repayment", "label", "thumbs_down"]
OUTCOME_TYPES: tuple[str, ...] = ("click", "acceptance", "repayment", "label", "thumbs_down")


class OutcomeCohort(Strict):
    # a key of the feedback event's ``cohort`` object ...
    attribute: str | None = Field(default=None, min_length=1, max_length=100)
    # ... or a JSON path in the decision record the feedback is about (``model``, ``route``)
    decision: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> OutcomeCohort:
        if (self.attribute is None) == (self.decision is None):
            raise ValueError("give exactly one of attribute or decision")
        if self.decision is not None and not _PATH.match(self.decision):
            raise ValueError(f"{self.decision!r} is not a JSON path like 'model' or 'a.b'")
        return self


class OutcomeSpec(Strict):
    # the feedback events this monitor counts
    type: OutcomeType
    cohort: OutcomeCohort | None = None


class OutcomeRateRule(Strict):
    # a fall of the outcome rate (click-through, acceptance, repayment) ...
    min_drop: float | None = Field(default=None, gt=0.0)
    # ... or a rise (thumbs down), against the baseline; exactly one is given
    min_rise: float | None = Field(default=None, gt=0.0)
    relative: bool = True

    @model_validator(mode="after")
    def _one_direction(self) -> OutcomeRateRule:
        if (self.min_drop is None) == (self.min_rise is None):
            raise ValueError("give exactly one of min_drop or min_rise")
        return self


class OutcomeCohortRule(Strict):
    # a cohort's outcome rate divided by the best cohort's
    min_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    min_cohort_samples: int = Field(default=30, ge=1)


class LabelDisagreementRule(Strict):
    # policy ids (shell globs) whose labels count
    policies: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # share of a policy's labels in the window that disagree with what it did
    max_rate: float = Field(default=0.2, ge=0.0, lt=1.0)
    # a policy with fewer labels in the window is not judged
    min_samples: int = Field(default=20, ge=1)


class Rules(Strict):
    rejection_rate: RejectionRateRule | None = None
    disparate_impact: DisparateImpactRule | None = None
    score_drift: ScoreDriftRule | None = None
    outcome_rate: OutcomeRateRule | None = None
    outcome_cohorts: OutcomeCohortRule | None = None
    label_disagreement: LabelDisagreementRule | None = None

    def answer_rules(self) -> bool:
        return any((self.rejection_rate, self.disparate_impact, self.score_drift))

    def outcome_rules(self) -> bool:
        return any((self.outcome_rate, self.outcome_cohorts, self.label_disagreement))


class MonitorConfig(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=100)
    description: str = ""
    # route names this monitor watches; "*" is every route
    routes: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    decision: DecisionSpec | None = None
    cohort: FieldSpec | None = None
    # an outcome monitor counts feedback events (docs/feedback.md), not answers
    outcome: OutcomeSpec | None = None
    score: FieldSpec | None = None
    window: int = Field(default=200, ge=2)
    baseline: int = Field(default=1000, ge=2)
    baseline_mode: Literal["trailing", "fixed"] = "trailing"
    # the baseline must hold this many observations before rules are judged
    min_baseline: int | None = Field(default=None, ge=1)
    rules: Rules = Field(default_factory=Rules)
    severity: Literal["low", "medium", "high", "critical"] = "high"

    @model_validator(mode="after")
    def _consistent(self) -> MonitorConfig:
        r = self.rules
        if not r.answer_rules() and not r.outcome_rules():
            raise ValueError(f"monitor {self.id!r} has no rules")
        if self.outcome is not None or r.outcome_rules():
            return self._consistent_outcome()
        if (r.rejection_rate or r.disparate_impact) and self.decision is None:
            raise ValueError(
                f"monitor {self.id!r}: rejection_rate and disparate_impact need a decision field"
            )
        if r.disparate_impact and self.cohort is None:
            raise ValueError(f"monitor {self.id!r}: disparate_impact needs a cohort field")
        if r.score_drift and self.score is None:
            raise ValueError(f"monitor {self.id!r}: score_drift needs a score field")
        return self

    def _consistent_outcome(self) -> MonitorConfig:
        r, out = self.rules, self.outcome
        if out is None:
            raise ValueError(
                f"monitor {self.id!r}: outcome_rate, outcome_cohorts and label_disagreement "
                "need an outcome field"
            )
        if r.answer_rules() or self.decision or self.cohort or self.score:
            raise ValueError(
                f"monitor {self.id!r}: an outcome monitor counts feedback, not answers; "
                "put decision, cohort, score and their rules in another monitor"
            )
        if out.type == "label":
            if r.outcome_rate or r.outcome_cohorts:
                raise ValueError(
                    f"monitor {self.id!r}: labels have no rate; use label_disagreement"
                )
        elif r.label_disagreement:
            raise ValueError(f"monitor {self.id!r}: label_disagreement needs outcome type label")
        if r.outcome_cohorts and out.cohort is None:
            raise ValueError(f"monitor {self.id!r}: outcome_cohorts needs outcome.cohort")
        return self

    def applies_to(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes


class MonitorsSection(Strict):
    monitors: list[MonitorConfig] = Field(default_factory=list)


def _positioned(where: str, raw: Any, exc: ValidationError) -> list[str]:
    """``file:line:col`` messages for a section read from ``where``."""
    try:
        source = load_source(where, keep_duplicates=True)
    except YamlSyntaxError:
        # the file changed since it was read; say what is wrong without a place
        return [
            f"{where}:1:1: {Diag.INVALID_VALUE}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        ]
    return validation_messages(source, exc, model=MonitorsSection, data={"monitors": raw})


def _at(where: str, loc: tuple[str | int, ...], code: Diag, message: str) -> str:
    """``message`` placed at ``loc`` of the file ``where``."""
    try:
        return load_source(where, keep_duplicates=True).error(loc, code, message)
    except YamlSyntaxError:
        return f"{where}:1:1: {code}: {message}"


def parse_monitors(sections: Iterable[tuple[str, Any]]) -> list[MonitorConfig]:
    """Validate ``monitors:`` sections, given as ``(file name, raw value)`` pairs.

    All problems are collected into one ``ConfigError``; ids must be unique.
    """
    out: list[MonitorConfig] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for where, raw in sections:
        try:
            section = MonitorsSection.model_validate({"monitors": raw})
        except ValidationError as exc:
            errors.extend(_positioned(where, raw, exc))
            continue
        for index, mon in enumerate(section.monitors):
            if mon.id in seen:
                errors.append(
                    _at(
                        where,
                        ("monitors", index, "id"),
                        Diag.DUPLICATE_ID,
                        f"monitor id {mon.id!r} is already defined in {seen[mon.id]}",
                    )
                )
                continue
            seen[mon.id] = where
            out.append(mon)
    if errors:
        raise ConfigError(f"{len(errors)} error(s) in monitors", errors)
    return out


# --- JSON paths ---------------------------------------------------------------

_STEP = re.compile(r"\[(\d+)\]|\[\"([^\"]+)\"\]|\.?([A-Za-z_][\w-]*)")
_MISSING = object()


def extract(data: Any, path: str) -> Any:
    """The value at ``path`` in ``data``, or ``_MISSING``."""
    cur = data
    body = path[1:] if path.startswith("$") else path
    for m in _STEP.finditer(body):
        index, quoted, name = m.groups()
        if index is not None:
            if not isinstance(cur, list) or int(index) >= len(cur):
                return _MISSING
            cur = cur[int(index)]
        else:
            key = quoted if quoted is not None else name
            if not isinstance(cur, dict) or key not in cur:
                return _MISSING
            cur = cur[key]
    return cur


# --- events and state ----------------------------------------------------------


class StateStore(Protocol):
    """Where monitor windows persist; methods may be plain or ``async``."""

    def save_state(self, key: str, state: dict[str, Any]) -> Any: ...

    def load_state(self, key: str) -> Any: ...


class MemoryStateStore:
    """A ``StateStore`` in a dict, for tests and single-process demos."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def save_state(self, key: str, state: dict[str, Any]) -> None:
        self.data[key] = state

    def load_state(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)


# one observation: (rejected or None, cohort or None, score or None)
_Obs = tuple[bool | None, str | None, float | None]


def psi(expected: np.ndarray, actual: np.ndarray, bins: int) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins)."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return 0.0 if np.all(actual == expected[0]) else math.inf
    edges[0], edges[-1] = -np.inf, np.inf
    e = np.histogram(expected, edges)[0] / len(expected)
    a = np.histogram(actual, edges)[0] / len(actual)
    # an empty bin would make the log infinite; a small floor keeps PSI finite
    e = np.clip(e, 1e-4, None)
    a = np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(expected: np.ndarray, actual: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    values = np.sort(np.concatenate([expected, actual]))
    cdf_e = np.searchsorted(np.sort(expected), values, side="right") / len(expected)
    cdf_a = np.searchsorted(np.sort(actual), values, side="right") / len(actual)
    return float(np.max(np.abs(cdf_e - cdf_a)))


def cohort_rates(hits: Any, counts: Any, min_samples: int) -> dict[str, float]:
    """Each cohort's rate in the window, for cohorts with enough samples to say one."""
    return {c: hits[c] / n for c, n in counts.items() if n >= min_samples}


def worst_to_best(rates: dict[str, float]) -> tuple[str, str, float]:
    """The lowest and highest cohort, and the ratio of their rates (1 when the best is 0)."""
    best = max(rates, key=lambda c: rates[c])
    worst = min(rates, key=lambda c: rates[c])
    return worst, best, rates[worst] / rates[best] if rates[best] > 0 else 1.0


class _Windows:
    """An observation window and its baseline: filled first (``fixed``) or fed by what
    leaves the window (``trailing``). Subclasses keep their counts in step."""

    config: MonitorConfig
    count: int
    window: deque[Any]
    baseline: deque[Any]

    def add(self, obs: Any) -> None:
        self.count += 1
        cfg = self.config
        if cfg.baseline_mode == "fixed" and len(self.baseline) < cfg.baseline:
            self._to_baseline(obs)
            return
        self.window.append(obs)
        self._count_window(obs, +1)
        if len(self.window) > cfg.window:
            old = self.window.popleft()
            self._count_window(old, -1)
            if cfg.baseline_mode == "trailing":
                self._to_baseline(old)

    def _to_baseline(self, obs: Any) -> None:
        raise NotImplementedError

    def _count_window(self, obs: Any, sign: int) -> None:
        raise NotImplementedError


class Monitor(_Windows):
    """Windows and rule state for one monitor (not thread-safe; MonitorSet locks)."""

    def __init__(self, config: MonitorConfig):
        self.config = config
        self.window: deque[_Obs] = deque()
        self.baseline: deque[_Obs] = deque()
        self.count = 0
        self.skipped = 0
        self.firing: dict[str, bool] = {}
        self.last_values: dict[str, float] = {}
        self._w_rejects = 0
        self._w_decisions = 0
        self._b_rejects = 0
        self._b_decisions = 0
        self._w_cohorts: Counter[str] = Counter()
        self._w_cohort_approvals: Counter[str] = Counter()

    # -- observations

    @staticmethod
    def coerce(raw: Any) -> _Obs:
        return _obs(list(raw))

    def parse(self, body: Any) -> _Obs | None:
        cfg = self.config
        rejected: bool | None = None
        cohort: str | None = None
        score: float | None = None
        if cfg.decision is not None:
            value = extract(body, cfg.decision.path)
            if value is not _MISSING and value is not None:
                norm = value.strip().lower() if isinstance(value, str) else value
                rejects = {_norm(v) for v in cfg.decision.reject_values}
                if norm in rejects:
                    rejected = True
                elif cfg.decision.approve_values is None or norm in {
                    _norm(v) for v in cfg.decision.approve_values
                }:
                    rejected = False
        if cfg.cohort is not None:
            value = extract(body, cfg.cohort.path)
            if value is not _MISSING and value is not None and not isinstance(value, dict | list):
                cohort = str(value)
        if cfg.score is not None:
            value = extract(body, cfg.score.path)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    score = float(value)
        if rejected is None and score is None:
            return None
        return rejected, cohort, score

    def _to_baseline(self, obs: _Obs) -> None:
        self.baseline.append(obs)
        if obs[0] is not None:
            self._b_decisions += 1
            self._b_rejects += obs[0]
        if len(self.baseline) > self.config.baseline:
            old = self.baseline.popleft()
            if old[0] is not None:
                self._b_decisions -= 1
                self._b_rejects -= old[0]

    def _count_window(self, obs: _Obs, sign: int) -> None:
        rejected, cohort, _ = obs
        if rejected is None:
            return
        self._w_decisions += sign
        self._w_rejects += sign * rejected
        if cohort is not None:
            self._w_cohorts[cohort] += sign
            self._w_cohort_approvals[cohort] += sign * (not rejected)

    # -- rules

    def ready(self) -> bool:
        cfg = self.config
        need = cfg.min_baseline if cfg.min_baseline is not None else cfg.baseline
        return len(self.window) >= cfg.window and len(self.baseline) >= min(need, cfg.baseline)

    def evaluate(self) -> dict[str, tuple[bool, float, float, dict[str, Any]]]:
        """Per rule: (firing, value, threshold, details)."""
        rules = self.config.rules
        out: dict[str, tuple[bool, float, float, dict[str, Any]]] = {}
        if rules.rejection_rate is not None and self.ready():
            r = rules.rejection_rate
            if self._w_decisions and self._b_decisions:
                cur = self._w_rejects / self._w_decisions
                base = self._b_rejects / self._b_decisions
                if r.relative:
                    rise = (cur - base) / base if base > 0 else (math.inf if cur > 0 else 0.0)
                else:
                    rise = cur - base
                out["rejection_rate"] = (
                    rise >= r.min_rise,
                    rise,
                    r.min_rise,
                    {
                        "window_rate": round(cur, 4),
                        "baseline_rate": round(base, 4),
                        "window_decisions": self._w_decisions,
                        "baseline_decisions": self._b_decisions,
                        "relative": r.relative,
                    },
                )
        if rules.disparate_impact is not None and len(self.window) >= self.config.window:
            r2 = rules.disparate_impact
            rates = cohort_rates(self._w_cohort_approvals, self._w_cohorts, r2.min_cohort_samples)
            if len(rates) >= 2:
                worst, best, ratio = worst_to_best(rates)
                out["disparate_impact"] = (
                    ratio < r2.min_ratio,
                    ratio,
                    r2.min_ratio,
                    {
                        "approval_rates": {c: round(v, 4) for c, v in sorted(rates.items())},
                        "disadvantaged": worst,
                        "reference": best,
                        "samples": {c: self._w_cohorts[c] for c in rates},
                    },
                )
        if rules.score_drift is not None and self.ready():
            r3 = rules.score_drift
            if self.count % r3.every == 0 or "score_drift" not in self.last_values:
                base_s = np.array([o[2] for o in self.baseline if o[2] is not None])
                cur_s = np.array([o[2] for o in self.window if o[2] is not None])
                if len(base_s) >= r3.bins and len(cur_s) >= r3.bins:
                    if r3.method == "psi":
                        drift = psi(base_s, cur_s, r3.bins)
                    else:
                        drift = ks(base_s, cur_s)
                    out["score_drift"] = (
                        drift >= r3.threshold,
                        drift,
                        r3.threshold,
                        {
                            "method": r3.method,
                            "window_mean": round(float(cur_s.mean()), 4),
                            "baseline_mean": round(float(base_s.mean()), 4),
                        },
                    )
        return out

    # -- persistence

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "window": [list(o) for o in self.window],
            "baseline": [list(o) for o in self.baseline],
            "count": self.count,
            "skipped": self.skipped,
            "firing": dict(self.firing),
            "last_values": dict(self.last_values),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"monitor state version {state.get('version')!r} is not supported")
        if state.get("kind", "answers") != "answers":
            return  # the id belonged to an outcome monitor: its windows mean nothing here
        fresh = Monitor(self.config)
        # replaying keeps the running counts right even if window sizes changed
        for o in state.get("baseline", []):
            fresh._to_baseline(_obs(o))
        for o in state.get("window", []):
            fresh.window.append(_obs(o))
            fresh._count_window(fresh.window[-1], +1)
        while len(fresh.window) > self.config.window:
            old = fresh.window.popleft()
            fresh._count_window(old, -1)
            if self.config.baseline_mode == "trailing":
                fresh._to_baseline(old)
        fresh.count = int(state.get("count", 0))
        fresh.skipped = int(state.get("skipped", 0))
        fresh.firing = {str(k): bool(v) for k, v in state.get("firing", {}).items()}
        fresh.last_values = {str(k): float(v) for k, v in state.get("last_values", {}).items()}
        self.__dict__.update(fresh.__dict__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One feedback event as the outcome monitors read it (docs/feedback.md)."""

    type: str
    # the outcome happened (a click, an acceptance, a repayment, a thumbs down);
    # False: it was offered and did not (an impression without a click)
    value: bool
    cohort: Mapping[str, Any] = field(default_factory=dict)
    # the decision record the feedback is about; None when the store has none
    record: Mapping[str, Any] | None = None
    # labels: the policy labelled, and how the label compares with what it did
    policy: str | None = None
    verdict: str | None = None


# labels: what the policy did against what the label says it should have done
AGREE, FALSE_POSITIVE, MISS = "agree", "false_positive", "miss"

# one outcome observation: (hit, cohort, policy, verdict); hit is the outcome's value,
# or for a label whether it disagrees with the policy
_OObs = tuple[bool, str | None, str | None, str | None]


class OutcomeMonitor(_Windows):
    """Windows of feedback events and outcome-rule state (not thread-safe; MonitorSet locks).

    The windows count events, as ``Monitor`` counts answers: ``window`` recent
    ones and a ``baseline`` of older ones, so a replay of the same feedback
    fires at the same event.
    """

    def __init__(self, config: MonitorConfig):
        assert config.outcome is not None
        self.config = config
        self.outcome = config.outcome
        self.window: deque[_OObs] = deque()
        self.baseline: deque[_OObs] = deque()
        self.count = 0
        self.skipped = 0
        self.firing: dict[str, bool] = {}
        self.last_values: dict[str, float] = {}
        self._w_hits = 0
        self._b_hits = 0
        self._w_cohorts: Counter[str] = Counter()
        self._w_cohort_hits: Counter[str] = Counter()
        self._w_labels: Counter[str] = Counter()
        self._w_verdicts: Counter[tuple[str, str]] = Counter()

    def read(self, event: Outcome) -> _OObs | None:
        """The observation ``event`` gives this monitor; None when it is not one to count."""
        if event.type != self.outcome.type:
            return None
        cohort = self._cohort(event)
        if self.outcome.type != "label":
            return bool(event.value), cohort, None, None
        rule = self.config.rules.label_disagreement
        if event.policy is None or event.verdict not in (AGREE, FALSE_POSITIVE, MISS):
            return None  # the decision or the policy's status is unknown: nothing to compare
        globs = rule.policies if rule is not None else ["*"]
        if not any(fnmatch.fnmatchcase(event.policy, g) for g in globs):
            return None
        return event.verdict != AGREE, cohort, event.policy, event.verdict

    def _cohort(self, event: Outcome) -> str | None:
        spec = self.outcome.cohort
        if spec is None:
            return None
        if spec.attribute is not None:
            value = event.cohort.get(spec.attribute)
        elif event.record is not None and spec.decision is not None:
            value = extract(event.record, spec.decision)
        else:
            return None
        if value is _MISSING or value is None or isinstance(value, dict | list):
            return None
        return str(value)

    @staticmethod
    def coerce(raw: Any) -> _OObs:
        hit, cohort, policy, verdict = raw
        return (
            bool(hit),
            None if cohort is None else str(cohort),
            None if policy is None else str(policy),
            None if verdict is None else str(verdict),
        )

    def _to_baseline(self, obs: _OObs) -> None:
        self.baseline.append(obs)
        self._b_hits += obs[0]
        if len(self.baseline) > self.config.baseline:
            self._b_hits -= self.baseline.popleft()[0]

    def _count_window(self, obs: _OObs, sign: int) -> None:
        hit, cohort, policy, verdict = obs
        self._w_hits += sign * hit
        if cohort is not None:
            self._w_cohorts[cohort] += sign
            self._w_cohort_hits[cohort] += sign * hit
        if policy is not None and verdict is not None:
            self._w_labels[policy] += sign
            self._w_verdicts[(policy, verdict)] += sign

    def ready(self) -> bool:
        cfg = self.config
        need = cfg.min_baseline if cfg.min_baseline is not None else cfg.baseline
        return len(self.window) >= cfg.window and len(self.baseline) >= min(need, cfg.baseline)

    def evaluate(self) -> dict[str, tuple[bool, float, float, dict[str, Any]]]:
        """Per rule: (firing, value, threshold, details)."""
        rules = self.config.rules
        out: dict[str, tuple[bool, float, float, dict[str, Any]]] = {}
        if rules.outcome_rate is not None and self.ready() and self.baseline:
            r = rules.outcome_rate
            cur = self._w_hits / len(self.window)
            base = self._b_hits / len(self.baseline)
            falling = r.min_drop is not None
            change = base - cur if falling else cur - base
            if r.relative:
                change = change / base if base > 0 else (0.0 if change <= 0 else math.inf)
            limit = r.min_drop if r.min_drop is not None else r.min_rise
            assert limit is not None
            out["outcome_rate"] = (
                self._judge("outcome_rate", change >= limit, change < limit / 2),
                change,
                limit,
                {
                    "outcome": self.outcome.type,
                    "direction": "drop" if falling else "rise",
                    "window_rate": round(cur, 4),
                    "baseline_rate": round(base, 4),
                    "window_events": len(self.window),
                    "baseline_events": len(self.baseline),
                    "relative": r.relative,
                },
            )
        if rules.outcome_cohorts is not None and len(self.window) >= self.config.window:
            r2 = rules.outcome_cohorts
            rates = cohort_rates(self._w_cohort_hits, self._w_cohorts, r2.min_cohort_samples)
            if len(rates) >= 2:
                worst, best, ratio = worst_to_best(rates)
                out["outcome_cohorts"] = (
                    self._judge(
                        "outcome_cohorts", ratio < r2.min_ratio, ratio >= (1 + r2.min_ratio) / 2
                    ),
                    ratio,
                    r2.min_ratio,
                    {
                        "outcome": self.outcome.type,
                        "rates": {c: round(v, 4) for c, v in sorted(rates.items())},
                        "lowest": worst,
                        "reference": best,
                        "samples": {c: self._w_cohorts[c] for c in sorted(rates)},
                    },
                )
        if rules.label_disagreement is not None:
            r3 = rules.label_disagreement
            judged = {}
            for policy, n in sorted(self._w_labels.items()):
                if n < r3.min_samples:
                    continue
                fp = self._w_verdicts[(policy, FALSE_POSITIVE)]
                miss = self._w_verdicts[(policy, MISS)]
                judged[policy] = {
                    "labels": n,
                    "false_positives": fp,
                    "misses": miss,
                    "disagreement": round((fp + miss) / n, 4),
                }
            if judged:
                worst = max(judged, key=lambda p: (judged[p]["disagreement"], p))
                rate = (judged[worst]["false_positives"] + judged[worst]["misses"]) / judged[worst][
                    "labels"
                ]
                out["label_disagreement"] = (
                    self._judge("label_disagreement", rate > r3.max_rate, rate <= r3.max_rate / 2),
                    rate,
                    r3.max_rate,
                    {"policy": worst, "policies": judged},
                )
        return out

    def _judge(self, rule: str, past: bool, back: bool) -> bool:
        """Whether ``rule`` fires: it starts past its threshold and clears only once back
        halfway to no change, so a rate that wobbles around the threshold (a sliding
        window of clicks moves by one click at a time) is one incident, not many."""
        if self.firing.get(rule, False):
            return not back
        return past

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": "outcome",
            "window": [list(o) for o in self.window],
            "baseline": [list(o) for o in self.baseline],
            "count": self.count,
            "skipped": self.skipped,
            "firing": dict(self.firing),
            "last_values": dict(self.last_values),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"monitor state version {state.get('version')!r} is not supported")
        if state.get("kind") != "outcome":
            return  # the id belonged to an answer monitor: its windows mean nothing here
        fresh = OutcomeMonitor(self.config)
        for o in state.get("baseline", []):
            fresh._to_baseline(self.coerce(o))
        for o in state.get("window", []):
            fresh.add_to_window(self.coerce(o))
        fresh.count = int(state.get("count", 0))
        fresh.skipped = int(state.get("skipped", 0))
        fresh.firing = {str(k): bool(v) for k, v in state.get("firing", {}).items()}
        fresh.last_values = {str(k): float(v) for k, v in state.get("last_values", {}).items()}
        self.__dict__.update(fresh.__dict__)

    def add_to_window(self, obs: _OObs) -> None:
        """Replay a saved window observation; what overflows a smaller window moves on."""
        self.window.append(obs)
        self._count_window(obs, +1)
        while len(self.window) > self.config.window:
            old = self.window.popleft()
            self._count_window(old, -1)
            if self.config.baseline_mode == "trailing":
                self._to_baseline(old)


def _norm(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


def _obs(raw: list[Any]) -> _Obs:
    rejected, cohort, score = raw
    return (
        None if rejected is None else bool(rejected),
        None if cohort is None else str(cohort),
        None if score is None else float(score),
    )


class MonitorSet:
    """All monitors of a policy set; ``observe`` is cheap and thread-safe."""

    def __init__(
        self,
        configs: list[MonitorConfig],
        on_event: Callable[[MonitorEvent], None] | None = None,
    ):
        self.monitors: dict[str, Monitor | OutcomeMonitor] = {
            c.id: OutcomeMonitor(c) if c.outcome is not None else Monitor(c) for c in configs
        }
        self.on_event = on_event
        self.events_total: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def observe(self, route: str, body: Any, now: float) -> list[MonitorEvent]:
        """Record one response of ``route``; return the events it caused."""
        return self.apply(route, self.parse(route, body), now)

    def parse(self, route: str, body: Any) -> list[tuple[str, _Obs]]:
        """What each monitor of ``route`` reads in ``body``: (monitor id, observation) pairs.

        Cheap and free of window state, so a process that does not lead the
        monitors parses here and hands the pairs to the one that does.
        """
        out: list[tuple[str, _Obs]] = []
        with self._lock:
            for mon in self.monitors.values():
                if not mon.config.applies_to(route) or isinstance(mon, OutcomeMonitor):
                    continue
                obs = mon.parse(body)
                if obs is None:
                    mon.skipped += 1
                    continue
                out.append((mon.config.id, obs))
        return out

    def read(self, route: str, event: Outcome) -> list[tuple[str, _OObs]]:
        """What each outcome monitor of ``route`` reads in a feedback event.

        ``route`` is the route of the decision the feedback is about ("" when
        the store has no such decision: only monitors of every route count it).
        Like ``parse``, free of window state, so any process can read.
        """
        out: list[tuple[str, _OObs]] = []
        with self._lock:
            for mon in self.monitors.values():
                if not isinstance(mon, OutcomeMonitor) or mon.outcome.type != event.type:
                    continue
                if not ("*" in mon.config.routes or (route and route in mon.config.routes)):
                    continue
                obs = mon.read(event)
                if obs is None:
                    mon.skipped += 1
                    continue
                out.append((mon.config.id, obs))
        return out

    def feed(self, route: str, event: Outcome, now: float) -> list[MonitorEvent]:
        """Record one feedback event; return the events it caused."""
        return self.apply(route, list(self.read(route, event)), now)

    def apply(
        self, route: str, observations: list[tuple[str, Any]], now: float
    ) -> list[MonitorEvent]:
        """Add parsed observations to the windows; return the rule changes they caused."""
        events: list[MonitorEvent] = []
        with self._lock:
            for monitor_id, raw in observations:
                mon = self.monitors.get(monitor_id)
                if mon is None:
                    continue  # a monitor of another policy revision
                mon.add(mon.coerce(raw))  # type: ignore[arg-type]
                for rule, (firing, value, threshold, details) in mon.evaluate().items():
                    mon.last_values[rule] = value
                    if firing == mon.firing.get(rule, False):
                        continue
                    mon.firing[rule] = firing
                    events.append(
                        MonitorEvent(
                            monitor=mon.config.id,
                            rule=rule,
                            state="fired" if firing else "resolved",
                            route=route,
                            at=now,
                            observation=mon.count,
                            value=_finite(value),
                            threshold=threshold,
                            severity=mon.config.severity,
                            details=details,
                        )
                    )
            for ev in events:
                self.events_total[(ev.monitor, ev.rule, ev.state)] += 1
        if self.on_event is not None:
            for ev in events:
                self.on_event(ev)
        return events

    def gauges(self) -> dict[tuple[str, str], float]:
        """The latest value of every rule, for a metrics exporter."""
        with self._lock:
            return {
                (mid, rule): value
                for mid, mon in self.monitors.items()
                for rule, value in mon.last_values.items()
            }

    # -- persistence: one key per monitor

    @staticmethod
    def key(monitor_id: str) -> str:
        return f"monitor:{monitor_id}"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {self.key(mid): mon.snapshot() for mid, mon in self.monitors.items()}

    def restore(self, states: Mapping[str, dict[str, Any] | None]) -> None:
        with self._lock:
            for mid, mon in self.monitors.items():
                state = states.get(self.key(mid))
                if state:
                    mon.restore(state)

    def save(self, store: StateStore) -> None:
        for key, state in self.snapshot().items():
            store.save_state(key, state)

    def load(self, store: StateStore) -> None:
        self.restore({self.key(mid): store.load_state(self.key(mid)) for mid in self.monitors})

    async def asave(self, store: StateStore) -> None:
        for key, state in self.snapshot().items():
            result = store.save_state(key, state)
            if inspect.isawaitable(result):
                await result

    async def aload(self, store: StateStore) -> None:
        states = {}
        for mid in self.monitors:
            result = store.load_state(self.key(mid))
            states[self.key(mid)] = await result if inspect.isawaitable(result) else result
        self.restore(states)


def _finite(value: float) -> float:
    # JSON has no infinity; a rise from a zero baseline is reported as a large number
    return value if math.isfinite(value) else 1e9
