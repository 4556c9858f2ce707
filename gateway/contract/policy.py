"""What every policy holds, whatever its kind.

Each kind subclasses ``PolicyBase`` with ``kind: Literal["name"]`` and its
detector parameters; the loader validates a discriminated union of all
registered kinds, so an unknown field or kind is an error that points into
the YAML.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import Field

from gateway.severity import Severity
from gateway.strict import Strict


class Action(StrEnum):
    ALLOW = "allow"
    ANNOTATE = "annotate"
    REDACT = "redact"
    FALLBACK = "fallback"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _ACTION_RANK[self]


# Strictest wins. Redacting keeps the answer; a fallback replaces it with
# another upstream's (which is scanned again); review withholds it pending a
# human; block withholds it for good.
_ACTION_RANK = {a: i for i, a in enumerate(Action)}


# actions after which nothing of the response is served
STOPPING_ACTIONS = frozenset({Action.BLOCK, Action.REVIEW, Action.FALLBACK})


class Status(StrEnum):
    PASS = "pass"
    BREACH = "breach"
    ERROR = "error"
    SKIPPED = "skipped"
    NOT_SCANNED = "not_scanned"


class ReviewOptions(Strict):
    """How a response held by a ``review`` action is handled (see docs/review.md)."""

    # placeholder: answer at once with a "held" completion and the review id;
    # wait: first wait up to ``wait_seconds`` for a reviewer's decision
    mode: Literal["placeholder", "wait"] = "placeholder"
    wait_seconds: float = Field(default=0.0, ge=0, le=300)
    # seconds a reviewer has before the item is overdue; unset uses the
    # gateway's SLA for the policy's severity
    sla: float | None = Field(default=None, gt=0)
    # seconds after which an undecided item expires, then ``expire_action`` applies
    expire_after: float = Field(default=7 * 86400, gt=0)
    expire_action: Literal["reject", "approve"] = "reject"
    # False keeps only a hash of the response and the evidence
    store_text: bool = True


class PolicyBase(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=100)
    kind: str
    description: str = ""
    mode: Literal["enforce", "monitor", "off"] = "enforce"
    # route names this policy applies to; "*" is every route
    routes: list[str] = Field(default_factory=lambda: ["*"])
    action: Action = Action.BLOCK
    severity: Severity = Severity.MEDIUM
    on_error: Literal["allow", "block"] = "block"
    # what the client sees when this policy blocks or holds a response
    message: str = "The response was withheld by a governance policy."
    # answer a block with an OpenAI-shaped HTTP error instead of a
    # well-formed ``content_filter`` completion
    error_response: bool = False
    redact_with: str = "[REDACTED]"
    # budget for one scan; past it the status is ``error``
    timeout_ms: int = Field(default=2000, gt=0, le=60000)
    review: ReviewOptions = ReviewOptions()

    def applies_to(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes


def check_patterns(value: list[str] | None) -> list[str] | None:
    """Validator body for pattern lists: each regular expression must compile."""
    for pattern in value or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
    return value
