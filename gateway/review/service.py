"""The review queue's parts, built once per gateway and shared by its API and pages."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.config import Settings
from gateway.policy.reload import PolicyHolder
from gateway.proxy.adapters import Adapters
from gateway.records.review import ReviewItem, ReviewOutcome
from gateway.review.actions import ReviewerActions
from gateway.review.callbacks import Callbacks
from gateway.review.holds import Holds
from gateway.review.metrics import ReviewMetrics
from gateway.review.outcomes import outcome_of
from gateway.review.store import ReviewStore
from gateway.review.sweeper import Sweeper


@dataclass(eq=False)
class ReviewService:
    settings: Settings
    policies: PolicyHolder
    adapters: Adapters
    db: ReviewStore
    metrics: ReviewMetrics
    holds: Holds
    actions: ReviewerActions
    callbacks: Callbacks
    sweeper: Sweeper

    def outcome(self, item: ReviewItem) -> ReviewOutcome:
        return outcome_of(item, self.adapters)


REVIEW = web.AppKey("review", ReviewService)
