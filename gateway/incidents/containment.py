"""The containment table: the switch in force on each route, behind ``ContainmentPort``.

The proxy reads ``switch_for`` on every governed request: one dict lookup on
a table kept in memory. Changes take effect in memory at once and are
written through to the ``route_containment`` table (in the caller's plan),
so a restart keeps every switch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.incidents.metrics import IncidentMetrics
from gateway.incidents.plan import Plan
from gateway.records.containment import Mode, Switch

log = logging.getLogger(__name__)


def _upsert(switch: Switch) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO route_containment (route, mode, incident_id, actor, reason, since, "
        "auto_revert) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route) DO UPDATE SET "
        "mode = excluded.mode, incident_id = excluded.incident_id, actor = excluded.actor, "
        "reason = excluded.reason, since = excluded.since, auto_revert = excluded.auto_revert",
        (
            switch.route,
            switch.mode,
            switch.incident_id,
            switch.actor,
            switch.reason,
            switch.since,
            int(switch.auto_revert),
        ),
    )


class ContainmentTable:
    def __init__(self, metrics: IncidentMetrics) -> None:
        self.metrics = metrics
        self.switches: dict[str, Switch] = {}
        # pre-bound metric children, so counting a contained request costs no label lookup
        self._counters: dict[str, Any] = {}

    # -- the hot path ----------------------------------------------------------------
    def switch_for(self, route: str) -> Switch | None:
        switch = self.switches.get(route)
        if switch is not None:
            self._counters[route].inc()
        return switch

    # -- changes ------------------------------------------------------------------------
    def load(self, rows: list[dict[str, Any]], routes: set[str], *, replace: bool = False) -> None:
        """Take the switches in ``rows``; with ``replace``, also drop those no longer there.

        ``replace`` is how a process learns of switches another process turned
        on or off: it re-reads the table on a notice and every few seconds.
        """
        seen = set()
        for row in rows:
            switch = Switch.from_json(row)
            if switch.route not in routes:
                log.warning("containment of unknown route %s ignored", switch.route)
                continue
            seen.add(switch.route)
            if self.switches.get(switch.route) == switch:
                continue
            self._put(switch)
            log.warning(
                "route %s is contained (%s) since %s by %s",
                switch.route,
                switch.mode,
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(switch.since)),
                switch.actor,
            )
        if replace:
            for route in set(self.switches) - seen:
                switch = self.switches.pop(route)
                self._counters.pop(route, None)
                self.metrics.containment.labels(route, switch.mode).set(0)
                log.warning("route %s is no longer contained", route)

    def _put(self, switch: Switch) -> None:
        previous = self.switches.get(switch.route)
        if previous is not None:
            self.metrics.containment.labels(switch.route, previous.mode).set(0)
        self.switches[switch.route] = switch
        self._counters[switch.route] = self.metrics.contained_requests.labels(
            switch.route, switch.mode
        )
        self.metrics.containment.labels(switch.route, switch.mode).set(1)

    def turn_on(
        self,
        route: str,
        mode: Mode,
        incident_id: str | None,
        actor: str,
        reason: str,
        plan: Plan,
        *,
        auto_revert: bool = False,
    ) -> tuple[Switch, Switch | None]:
        """Put ``mode`` in force on ``route`` now; return the switch and the one it replaced."""
        previous = self.switches.get(route)
        switch = Switch(route, mode, incident_id, actor, reason, time.time(), auto_revert)
        self._put(switch)
        self.metrics.switches.labels(
            route, mode, "on", "auto" if actor == "auto" else "manual"
        ).inc()
        plan.statements.append(_upsert(switch))
        plan.containment = True
        return switch, previous

    def turn_off(self, route: str, actor: str, plan: Plan) -> Switch | None:
        switch = self.switches.pop(route, None)
        if switch is None:
            return None
        self._counters.pop(route, None)
        self.metrics.containment.labels(route, switch.mode).set(0)
        self.metrics.switches.labels(
            route, switch.mode, "off", "auto" if actor == "auto" else "manual"
        ).inc()
        plan.statements.append(("DELETE FROM route_containment WHERE route = ?", (route,)))
        plan.containment = True
        return switch

    def of_incident(self, incident_id: str) -> list[Switch]:
        return [s for s in self.switches.values() if s.incident_id == incident_id]
