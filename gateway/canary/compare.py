"""Each variant's figures over a window of decisions, and the rollback rule on them.

The figures come from the store's decision records, so they count every
process and replica that writes to it. A window starts at the later of
``now - window`` and the last change of the route's weights: answers given
under the weights before a rollback or a promotion say nothing of the
weights now.

A rate is compared as a ratio to the baseline's. A baseline with no breach
at all would make any candidate breach infinitely worse, so the baseline's
rate is taken as at least one answer's worth (``1 / answers``): with 200
answers each, 3 breaches against none is a ratio of 3. A ratio is not
enough on its own: a candidate with 5 % of the traffic has few answers, and
a few unlucky ones make a large ratio. So a rate limit is passed only when
the difference is also beyond chance: the lower bound of its 95 % interval
(Newcombe's, ``gateway.stats``) is above 0. Latency is compared by the ratio
of the means alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import RollbackLimit, Route
from gateway.stats import difference, wilson
from gateway.store.base import Store

METRICS = ("breach_rate", "error_rate", "latency")


@dataclass(frozen=True)
class Figures:
    variant: str
    answers: int
    breaches: int
    errors: int
    # mean milliseconds to a whole answer
    latency_ms: float

    def value(self, metric: str) -> float:
        if metric == "latency":
            return self.latency_ms
        hits = self.breaches if metric == "breach_rate" else self.errors
        return hits / self.answers if self.answers else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "breaches": self.breaches,
            "breach_rate": round(self.value("breach_rate"), 6),
            "errors": self.errors,
            "error_rate": round(self.value("error_rate"), 6),
            "latency_ms": round(self.latency_ms, 3),
        }


async def figures(store: Store, route: str, since: float) -> dict[str, Figures]:
    rows = await store.fetchall(
        "SELECT variant, COUNT(*) AS answers, SUM(breached) AS breaches, "
        "SUM(CASE WHEN action = 'error' THEN 1 ELSE 0 END) AS errors, "
        "AVG(total_ms) AS latency FROM decisions "
        "WHERE route = ? AND ts >= ? AND variant IS NOT NULL GROUP BY variant",
        route,
        since,
    )
    return {
        row["variant"]: Figures(
            row["variant"],
            int(row["answers"]),
            int(row["breaches"] or 0),
            int(row["errors"] or 0),
            float(row["latency"] or 0.0),
        )
        for row in rows
    }


@dataclass(frozen=True)
class Breach:
    """A candidate past one of the rollback limits."""

    metric: str
    candidate: Figures
    baseline: Figures
    ratio: float
    limit: RollbackLimit

    def summary(self) -> str:
        return (
            f"variant {self.candidate.variant}: {self.metric} {_shown(self.metric, self.candidate)}"
            f" against {self.baseline.variant}'s {_shown(self.metric, self.baseline)}, "
            f"{self.ratio:.2f} times (limit {self.limit.max_ratio:g})"
        )

    def details(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "metric": self.metric,
            "candidate": self.candidate.variant,
            "baseline": self.baseline.variant,
            "ratio": round(self.ratio, 4),
            "max_ratio": self.limit.max_ratio,
            "min_samples": self.limit.min_samples,
            "variants": {
                self.candidate.variant: self.candidate.to_json(),
                self.baseline.variant: self.baseline.to_json(),
            },
        }


def _shown(metric: str, f: Figures) -> str:
    if metric == "latency":
        return f"{f.latency_ms:.1f} ms ({f.answers} answers)"
    hits = f.breaches if metric == "breach_rate" else f.errors
    return f"{f.value(metric):.1%} ({hits}/{f.answers})"


def beyond_chance(metric: str, candidate: Figures, baseline: Figures) -> bool:
    """Whether the candidate's rate is above the baseline's by more than chance explains."""
    if metric == "latency":
        return True
    hits = "breaches" if metric == "breach_rate" else "errors"
    diff = difference(
        wilson(getattr(candidate, hits), candidate.answers),
        wilson(getattr(baseline, hits), baseline.answers),
    )
    return diff.low > 0


def ratio(metric: str, candidate: Figures, baseline: Figures) -> float:
    value = candidate.value(metric)
    if metric == "latency":
        # a baseline answering in under a millisecond is no measure to divide by
        return value / max(baseline.latency_ms, 1.0)
    return value / max(baseline.value(metric), 1 / baseline.answers)


def breaches(route: Route, found: dict[str, Figures], candidates: list[str]) -> list[Breach]:
    """Every limit of ``route.rollback_on`` a candidate is past, with enough answers on both."""
    rule = route.rollback_on
    baseline_variant = route.baseline_variant()
    if rule is None or baseline_variant is None:
        return []
    baseline = found.get(baseline_variant.name)
    out: list[Breach] = []
    for name in candidates:
        candidate = found.get(name)
        if candidate is None or baseline is None:
            continue
        for metric in METRICS:
            limit: RollbackLimit | None = getattr(rule, metric)
            if limit is None:
                continue
            if candidate.answers < limit.min_samples or baseline.answers < limit.min_samples:
                continue
            found_ratio = ratio(metric, candidate, baseline)
            if found_ratio > limit.max_ratio and beyond_chance(metric, candidate, baseline):
                out.append(Breach(metric, candidate, baseline, found_ratio, limit))
    return out
