"""The subsystem contract: every hook a subsystem may implement.

A subsystem (the review queue, incidents, monitors, the index service, or
a third party's) is a subclass of ``Subsystem`` listed in the
``gateway.subsystems`` entry-point group. The gateway makes one instance per
``Gateway`` and calls its hooks in this order:

1. ``policy_sections()`` (a classmethod): top-level sections of policy files
   it parses, so validation and hot reload check them with everything else;
2. ``cli_commands(commands)`` (a classmethod): extra ``gateway`` commands;
3. ``install()``: build its services, plug the ports it implements into the
   gateway (``gw.hold``, ``gw.containment``) and subscribe to events on
   ``gw.events`` (``DecisionRecord``, ``PolicySwap``, ``PolicyReloadFailed``,
   ``AnswerBody``, ``MonitorEvent``, ``ReviewEvent``);
4. ``proxy_routes(app)`` and ``admin_routes(app)``: paths it serves on the
   proxy and admin listeners;
5. ``start()`` when the gateway starts serving, ``stop()`` when it drains.

Every hook has a default that does nothing, so a subsystem implements only
what it needs. Hooks never reach into the proxy: what the data path offers
is ``gateway.proxy.ports``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from aiohttp import web

from gateway.proxy.state import Gateway

# parses one policy-file section: (file, raw value) pairs in file order;
# raises ConfigError with every ``file:line:col`` problem
SectionParser = Callable[[list[tuple[str, Any]]], Any]

HOOKS = (
    "policy_sections",
    "cli_commands",
    "install",
    "proxy_routes",
    "admin_routes",
    "start",
    "stop",
)


class Subsystem:
    name: ClassVar[str] = ""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    @classmethod
    def policy_sections(cls) -> Mapping[str, SectionParser]:
        """Top-level policy-file sections this subsystem owns, with their parsers."""
        return {}

    @classmethod
    def cli_commands(cls, commands: argparse._SubParsersAction) -> None:
        """Add ``gateway`` subcommands."""

    def install(self) -> None:
        """Build services, plug ports, subscribe to events."""

    def proxy_routes(self, app: web.Application) -> None:
        """Add paths clients reach on the proxy listener (before its catch-all)."""

    def admin_routes(self, app: web.Application) -> None:
        """Add API paths and pages to the admin listener."""

    async def start(self) -> None:
        """Start background work; the gateway's store and HTTP client are open."""

    async def stop(self) -> None:
        """Finish background work and flush what must not be lost."""
