"""``Switch``: containment in force on a route (fallback, hold everything, kill switch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SCHEMA = 1

Mode = Literal["fallback", "review_all", "block"]
MODES: tuple[Mode, ...] = ("fallback", "review_all", "block")
# a stricter switch replaces a weaker one, never the other way round
MODE_RANK: dict[str, int] = {"fallback": 1, "review_all": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class Switch:
    route: str
    mode: Mode
    incident_id: str | None
    actor: str
    reason: str
    since: float
    # lift the switch when its incident resolves
    auto_revert: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "route": self.route,
            "mode": self.mode,
            "incident_id": self.incident_id,
            "actor": self.actor,
            "reason": self.reason,
            "since": self.since,
            "auto_revert": self.auto_revert,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Switch:
        """From the JSON form or from a ``route_containment`` row."""
        return cls(
            route=data["route"],
            mode=data["mode"],
            incident_id=data.get("incident_id"),
            actor=data.get("actor", ""),
            reason=data.get("reason", ""),
            since=float(data.get("since") or 0.0),
            auto_revert=bool(data.get("auto_revert")),
        )
