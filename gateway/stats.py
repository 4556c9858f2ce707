"""Confidence intervals for breach rates and for the difference of two rates.

Wilson's score interval keeps its coverage for rates near 0 and for small
samples, where the normal approximation gives impossible negative bounds;
Newcombe's method 10 combines two Wilson intervals into one for a
difference of independent rates (Newcombe 1998, Statistics in Medicine
17:873-890), which is what a candidate-against-baseline comparison needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    hits: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {
            "hits": self.hits,
            "total": self.total,
            "rate": round(self.value, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
        }


def wilson(hits: int, total: int, z: float = Z95) -> Rate:
    """``hits`` out of ``total`` with its Wilson score interval (0 to 1 when ``total`` is 0)."""
    if total <= 0:
        return Rate(0, 0, 0.0, 1.0)
    p = hits / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    # at 0 or all hits the bound is exactly 0 or 1; rounding must not move it
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == total else min(1.0, centre + half)
    return Rate(hits, total, low, high)


@dataclass(frozen=True)
class Difference:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {
            "difference": round(self.value, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
        }


def difference(candidate: Rate, baseline: Rate) -> Difference:
    """Candidate's rate minus the baseline's, with Newcombe's hybrid score interval."""
    p1, p2 = candidate.value, baseline.value
    d = p1 - p2
    low = d - math.sqrt((p1 - candidate.low) ** 2 + (baseline.high - p2) ** 2)
    high = d + math.sqrt((candidate.high - p1) ** 2 + (p2 - baseline.low) ** 2)
    return Difference(d, max(-1.0, low), min(1.0, high))
