"""The weights in force on each route's variants, behind ``VariantsPort``.

The proxy reads ``weights_for`` on every request of a route with variants:
one dict lookup. A rollback, a promotion or a reset writes the
``route_variants`` table and replaces the entry here at once; other
processes read the table on a notice and every reconcile interval. A route
without a row serves its configured weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Override:
    """Weights set over a route's configured ones, by whom, why and since when."""

    route: str
    weights: dict[str, float]
    actor: str
    reason: str
    since: float
    incident_id: str | None = None
    # a registry alias this change moved: {"model": "name@alias", "from": v, "to": v}
    registry: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "weights": dict(self.weights),
            "actor": self.actor,
            "reason": self.reason,
            "since": self.since,
            "incident_id": self.incident_id,
            "registry": dict(self.registry) if self.registry else None,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Override:
        return cls(
            route=row["route"],
            weights={str(k): float(v) for k, v in json.loads(row["weights"]).items()},
            actor=row["actor"],
            reason=row["reason"],
            since=float(row["since"]),
            incident_id=row.get("incident_id"),
            registry=json.loads(row["registry"]) if row.get("registry") else None,
        )

    def replacing(self, since: float | None) -> tuple[str, tuple[Any, ...]]:
        """The write that takes effect only if the row is still the one read (``since``;
        None: no row), so a change made elsewhere meanwhile is never overwritten."""
        registry = json.dumps(self.registry, sort_keys=True) if self.registry else None
        weights = json.dumps(self.weights, sort_keys=True)
        if since is None:
            return (
                "INSERT INTO route_variants (route, weights, actor, reason, incident_id, since, "
                "registry) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route) DO NOTHING",
                (
                    self.route,
                    weights,
                    self.actor,
                    self.reason,
                    self.incident_id,
                    self.since,
                    registry,
                ),
            )
        return (
            "UPDATE route_variants SET weights = ?, actor = ?, reason = ?, incident_id = ?, "
            "since = ?, registry = ? WHERE route = ? AND since = ?",
            (
                weights,
                self.actor,
                self.reason,
                self.incident_id,
                self.since,
                registry,
                self.route,
                since,
            ),
        )

    def upsert(self) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT INTO route_variants (route, weights, actor, reason, incident_id, since, "
            "registry) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route) DO UPDATE SET "
            "weights = excluded.weights, actor = excluded.actor, reason = excluded.reason, "
            "incident_id = excluded.incident_id, since = excluded.since, "
            "registry = excluded.registry",
            (
                self.route,
                json.dumps(self.weights, sort_keys=True),
                self.actor,
                self.reason,
                self.incident_id,
                self.since,
                json.dumps(self.registry, sort_keys=True) if self.registry else None,
            ),
        )


class WeightsTable:
    """The ``VariantsPort``: weights in force, and the URLs registry aliases point at."""

    def __init__(self, routes: set[str]) -> None:
        self.routes = routes
        self.overrides: dict[str, Override] = {}
        # registry alias -> its serving URL, as last read (None: no URL tag on the version)
        self.urls: dict[str, str | None] = {}

    # -- the hot path ---------------------------------------------------------------------
    def weights_for(self, route: str) -> Mapping[str, float] | None:
        found = self.overrides.get(route)
        return found.weights if found is not None else None

    def upstream_of(self, model: str) -> str | None:
        return self.urls.get(model)

    # -- changes ---------------------------------------------------------------------------
    def load(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Take the table as read from the store: what is not in it is no longer overridden."""
        fresh: dict[str, Override] = {}
        for row in rows:
            override = Override.from_row(row)
            if override.route not in self.routes:
                log.warning("variant weights of unknown route %s ignored", override.route)
                continue
            held = self.overrides.get(override.route)
            if held is not None and held.since > override.since:
                # a read begun before this process's own change committed: keep the change
                override = held
            fresh[override.route] = override
            if self.overrides.get(override.route) != override:
                log.warning(
                    "route %s serves its variants at %s (by %s: %s)",
                    override.route,
                    override.weights,
                    override.actor,
                    override.reason,
                )
        for route in set(self.overrides) - set(fresh):
            log.warning("route %s serves its configured variant weights again", route)
        self.overrides = fresh

    def put(self, override: Override) -> None:
        self.overrides[override.route] = override

    def drop(self, route: str) -> Override | None:
        return self.overrides.pop(route, None)
