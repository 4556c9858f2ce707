"""Severity scales: a policy's severity names the harm, the incident scale is on-call's.

Policies say ``low`` to ``critical``; incidents say ``SEV4`` (mildest) to
``SEV1`` (worst). ``from_policy`` maps one onto the other.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema


class Severity(StrEnum):
    """A policy's severity."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _POLICY_RANK[self]


_POLICY_RANK = {s: i for i, s in enumerate(Severity)}

SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")

_FROM_POLICY = {"critical": "SEV1", "high": "SEV2", "medium": "SEV3", "low": "SEV4"}


def normalize(value: object) -> str:
    """``SEV2``, ``sev2``, ``2`` or a policy severity (``high``) to ``SEV2``."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4:
        return f"SEV{value}"
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _FROM_POLICY:
            return _FROM_POLICY[text.lower()]
        upper = text.upper()
        if upper in SEVERITIES:
            return upper
        if upper.isdigit() and f"SEV{upper}" in SEVERITIES:
            return f"SEV{upper}"
    raise ValueError(f"{value!r} is not a severity (use SEV1..SEV4 or critical, high, medium, low)")


def rank(sev: str) -> int:
    """Higher is worse: SEV1 -> 4, SEV4 -> 1."""
    return 5 - int(sev[3:])


def at_least(sev: str, threshold: str) -> bool:
    return rank(sev) >= rank(threshold)


def from_policy(policy_severity: str) -> str:
    return _FROM_POLICY.get(policy_severity, "SEV3")


def _any_case(word: str) -> str:
    # JSON Schema patterns have no case-insensitive flag
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_SPELLINGS = "|".join(_any_case(w) for w in (*SEVERITIES, *_FROM_POLICY))

# an incident severity in a config model, accepting every spelling ``normalize`` does;
# its JSON Schema offers the usual spellings to editors and allows the others
Sev = Annotated[
    str,
    BeforeValidator(normalize),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": [*SEVERITIES, *_FROM_POLICY]},
                {"type": "string", "pattern": rf"^\s*({_SPELLINGS}|[1-4])\s*$"},
                {"type": "integer", "minimum": 1, "maximum": 4},
            ]
        }
    ),
]
