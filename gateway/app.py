"""Build the gateway: shared state, the proxy app and the admin app."""

from __future__ import annotations

import gc
import importlib
import logging

from aiohttp import web

from gateway.admin import create_admin_app
from gateway.config import Settings
from gateway.observability.decisions import DecisionLog
from gateway.observability.metrics import Metrics
from gateway.policy.reload import PolicyHolder
from gateway.proxy.adapters import RagJsonAdapter
from gateway.proxy.handler import handle
from gateway.proxy.state import GATEWAY, Gateway
from gateway.store.base import open_store

log = logging.getLogger(__name__)

# Subsystems that plug into the gateway. Each module exposes
# ``install(gw: Gateway) -> None`` (register services, decision listeners and
# start/stop hooks on ``gw``) and ``admin_routes(app: web.Application) -> None``
# (add its API and pages to the admin app), and optionally
# ``proxy_routes(app)`` for paths clients reach on the proxy listener.
SUBSYSTEMS: tuple[str, ...] = (
    "gateway.index.service",
    "gateway.incidents.monitoring",
    "gateway.incidents.service",
    "gateway.review.service",
)


def build_gateway(settings: Settings) -> Gateway:
    """Load policies and build every long-lived object; raise ``ConfigError`` early."""
    metrics = Metrics()
    resources: dict = {}

    def swapped(policy_set) -> None:
        metrics.policy_revision.clear()
        metrics.policy_revision.labels(policy_set.revision).set(1)
        metrics.reloads.labels("ok").inc()

    holder = PolicyHolder(
        settings.policies,
        resources=resources,
        on_swap=swapped,
        on_failure=lambda errors: metrics.reloads.labels("failed").inc(),
    )
    store = open_store(settings.store_url())
    gw = Gateway(
        settings=settings,
        policies=holder,
        metrics=metrics,
        store=store,
        decisions=DecisionLog(store, metrics),
        rag_adapters={
            r.name: RagJsonAdapter(**r.rag.model_dump())
            for r in settings.routes
            if r.protocol == "rag-json"
        },
        resources=resources,
    )
    for name in SUBSYSTEMS:
        importlib.import_module(name).install(gw)
    holder.load_now()
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
    for name in SUBSYSTEMS:
        hook = getattr(importlib.import_module(name), "proxy_routes", None)
        if hook is not None:
            hook(app)
    app.router.add_route("*", "/{tail:.*}", handle)

    async def lifecycle(app: web.Application):
        await gw.acquire()
        yield
        await gw.release()

    app.cleanup_ctx.append(lifecycle)
    return app


__all__ = ["build_gateway", "create_app", "create_admin_app", "GATEWAY"]
