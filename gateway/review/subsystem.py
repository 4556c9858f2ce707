"""The review queue as a gateway subsystem: the ``HoldPort``, the reviewer API and pages,
and the client's result poll on both listeners.

Reviewers decide through the admin API or the web UI; clients learn the
outcome by polling, by a signed callback, or, on routes that allow it, by
waiting a few seconds on the original call.
"""

from __future__ import annotations

from aiohttp import web

from gateway.proxy.hookspecs import Subsystem
from gateway.review import api, ui
from gateway.review.actions import ReviewerActions
from gateway.review.callbacks import Callbacks
from gateway.review.holds import Holds
from gateway.review.metrics import ReviewMetrics
from gateway.review.service import REVIEW, ReviewService
from gateway.review.store import ReviewStore
from gateway.review.sweeper import Sweeper


class Review(Subsystem):
    name = "review"

    def install(self) -> None:
        gw = self.gw
        db = ReviewStore(gw.store)
        metrics = ReviewMetrics(gw.metrics.registry)
        actions = ReviewerActions(gw.settings, db, metrics, gw.events)
        self.service = ReviewService(
            settings=gw.settings,
            policies=gw.policies,
            adapters=gw.adapters,
            db=db,
            metrics=metrics,
            holds=Holds(gw.settings, db, metrics, gw.events, gw.adapters),
            actions=actions,
            callbacks=Callbacks(gw.settings, db, metrics, gw.events, lambda: gw.http),
            sweeper=Sweeper(db, metrics, gw.events, actions, gw.settings.review.sweep_interval),
        )
        gw.hold = self.service.holds

    async def start(self) -> None:
        await self.service.sweeper.refresh_metrics()
        self.gw.spawn(self.service.sweeper.run(), "review-sla")
        self.gw.spawn(self.service.callbacks.run(), "review-callbacks")

    def proxy_routes(self, app: web.Application) -> None:
        app[REVIEW] = self.service
        api.install_proxy(app)

    def admin_routes(self, app: web.Application) -> None:
        app[REVIEW] = self.service
        api.install(app)
        ui.install(app)
