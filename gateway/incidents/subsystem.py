"""Incidents as a gateway subsystem: rules in policy files, the containment port,
the API and pages, and the ``route`` and ``incident`` commands."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from aiohttp import web

from gateway.incidents import api, cli, ui
from gateway.incidents.metrics import IncidentMetrics
from gateway.incidents.rules import parse_rules
from gateway.incidents.service import IncidentService
from gateway.proxy.hookspecs import SectionParser, Subsystem
from gateway.records.decision import DecisionRecord
from gateway.records.monitor import MonitorEvent


class Incidents(Subsystem):
    name = "incidents"

    @classmethod
    def policy_sections(cls) -> Mapping[str, SectionParser]:
        return {"incident_rules": parse_rules}

    @classmethod
    def cli_commands(cls, commands: argparse._SubParsersAction) -> None:
        cli.register(commands)

    def install(self) -> None:
        gw = self.gw
        self.service = IncidentService(
            gw.settings,
            gw.store,
            gw.policies,
            IncidentMetrics(gw.metrics.registry),
            leadership=gw.leadership,
            broadcast=gw.broadcast,
        )
        gw.containment = self.service.table
        gw.events.subscribe(DecisionRecord, self.service.on_decision)
        # a record the process had not applied when it died is applied on the next start
        gw.journal.register(self.service)
        gw.events.subscribe(MonitorEvent, self.service.on_monitor_event)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def admin_routes(self, app: web.Application) -> None:
        app[api.INCIDENTS] = self.service
        api.install(app)
        ui.install(app)
