"""Build the gateway: shared state, its subsystems, the proxy app and the admin app."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway.admin import create_admin_app
from gateway.config import Settings
from gateway.contract.kind import Resources
from gateway.errors import ConfigError
from gateway.events import EventBus
from gateway.observability.decisions import DecisionLog
from gateway.observability.journal import DecisionJournal
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import build_tracer
from gateway.plugins import SUBSYSTEMS, load_group
from gateway.policy.loader import sections_of
from gateway.policy.reload import PolicyHolder, PolicyReloadFailed, PolicySwap
from gateway.proxy.adapters import Adapters
from gateway.proxy.hookspecs import Subsystem
from gateway.proxy.listener import handle
from gateway.proxy.state import GATEWAY, Gateway
from gateway.records.decision import DecisionRecord
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.leadership import Leadership

log = logging.getLogger(__name__)


PORTS = ("hold", "containment", "variants")


def installed_subsystems() -> list[type[Subsystem]]:
    """Every subsystem in the ``gateway.subsystems`` entry-point group."""
    return [cls for _, cls in load_group(SUBSYSTEMS)]


def shares_state(store: Store, worker: bool) -> bool:
    """Whether other processes may use this store: PostgreSQL, or one of several workers."""
    return worker or store.dialect == "postgresql"


def build_gateway(
    settings: Settings,
    subsystems: Sequence[type[Subsystem]] | None = None,
    *,
    worker: bool = False,
) -> Gateway:
    """Load policies and build every long-lived object; raise ``ConfigError`` early.

    ``worker``: this process is one of several serving the same ports, so its
    store is shared with the others even when it is a SQLite file.
    """
    metrics = Metrics()
    events = EventBus()
    resources = Resources()
    store = open_store(settings.store_url())
    decisions = DecisionLog(store, metrics)
    journal = DecisionJournal(Path(settings.data_dir) / "journal")
    journal.register(decisions)
    classes = installed_subsystems() if subsystems is None else list(subsystems)
    holder = PolicyHolder(
        settings.policies, events=events, resources=resources, sections=sections_of(classes)
    )
    gw = Gateway(
        settings=settings,
        policies=holder,
        metrics=metrics,
        store=store,
        decisions=decisions,
        journal=journal,
        events=events,
        adapters=Adapters(settings.routes),
        resources=resources,
        tracer=build_tracer(settings.tracing) if settings.tracing.enabled else None,
        leadership=Leadership(store) if shares_state(store, worker) else None,
    )
    # the journal first: a record is in it before any consumer can commit it
    events.subscribe(DecisionRecord, journal.record)
    events.subscribe(DecisionRecord, decisions.add)

    def swapped(swap: PolicySwap) -> None:
        metrics.policy_revision.clear()
        metrics.policy_revision.labels(swap.policy_set.revision).set(1)
        metrics.reloads.labels("ok").inc()

    events.subscribe(PolicySwap, swapped)
    events.subscribe(PolicyReloadFailed, lambda _: metrics.reloads.labels("failed").inc())
    for cls in classes:
        sub = cls(gw)
        ports = (gw.hold, gw.containment, gw.variants)
        sub.install()
        plugged = (gw.hold, gw.containment, gw.variants)
        for before, after, port in zip(ports, plugged, PORTS, strict=True):
            if before is not None and after is not before:
                raise ConfigError(
                    f"subsystem {cls.name} plugs the {port} port another already holds"
                )
        gw.subsystems.append(sub)
    gw.policies.load_now()
    # what we just built lives for the process: keep it out of every collection
    gc.collect()
    gc.freeze()
    return gw


def create_app(settings: Settings | Gateway) -> web.Application:
    """The proxy app; its admin twin is ``create_admin_app(app[GATEWAY])``."""
    gw = settings if isinstance(settings, Gateway) else build_gateway(settings)
    # bodies are read and limited by the handler, which answers in the client's format
    app = web.Application(client_max_size=1024**4)
    app[GATEWAY] = gw
    # a subsystem may serve a path to clients on the proxy listener (the review
    # result poll); those routes must come before the catch-all
    for sub in gw.subsystems:
        sub.proxy_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle)

    async def lifecycle(app: web.Application):
        await gw.acquire()
        yield
        await gw.release()

    app.cleanup_ctx.append(lifecycle)
    return app


__all__ = ["build_gateway", "create_app", "create_admin_app", "GATEWAY"]
