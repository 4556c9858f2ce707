"""Route variants as a gateway subsystem: the weights port, the watcher, the API and commands."""

from __future__ import annotations

import argparse

from aiohttp import web

from gateway.canary import api, cli, ui
from gateway.canary.service import CanaryService
from gateway.proxy.hookspecs import Subsystem


class Canary(Subsystem):
    name = "canary"

    @classmethod
    def cli_commands(cls, commands: argparse._SubParsersAction) -> None:
        cli.register(commands)

    def install(self) -> None:
        self.service = CanaryService(self.gw)
        if self.service.routes:
            self.gw.variants = self.service.table

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def admin_routes(self, app: web.Application) -> None:
        app[api.CANARY] = self.service
        api.install(app)
        ui.install(app)
