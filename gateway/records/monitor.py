"""``MonitorEvent``: a windowed monitor's rule started or stopped firing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA = 1


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    monitor: str
    rule: str
    state: Literal["fired", "resolved"]
    route: str
    at: float
    # observation count when the rule changed state, for replay and audit
    observation: int
    value: float
    threshold: float
    severity: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), schema=SCHEMA)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MonitorEvent:
        return cls(**{k: v for k, v in data.items() if k != "schema"})
