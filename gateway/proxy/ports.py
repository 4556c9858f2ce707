"""What the data path offers subsystems, and what it needs from them.

The proxy never imports a subsystem. It declares these small interfaces;
subsystems implement them and plug them into the ``Gateway`` when they are
installed (the review queue is a ``HoldPort``, incidents a
``ContainmentPort``). Without an implementation the proxy still works: a
``review`` action then blocks, and no route is ever contained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.records.containment import Switch
from gateway.records.review import HeldAnswer, ReviewOutcome, Ticket


class HoldPort(Protocol):
    """Holds an answer for a person and reports the decision."""

    async def hold(self, answer: HeldAnswer) -> Ticket:
        """Store ``answer`` durably; raise ``ReviewUnavailable`` if it cannot be stored."""
        ...

    async def wait(self, review_id: str, seconds: float) -> ReviewOutcome | None:
        """The decision, if a person takes it within ``seconds``; else None."""
        ...


class ContainmentPort(Protocol):
    """The containment switch in force on a route, read on every governed request."""

    def switch_for(self, route: str) -> Switch | None: ...


class VariantsPort(Protocol):
    """What a route's variants serve now: their weights, and the URLs registry aliases name.

    Read on every request of a route with ``variants``.
    """

    def weights_for(self, route: str) -> Mapping[str, float] | None:
        """Weights by variant name; None: the route's configured weights."""
        ...

    def upstream_of(self, model: str) -> str | None:
        """The URL the registry alias ``model`` names now; None while it is not known."""
        ...


class ClientChannel(Protocol):
    """What an exchange lets others do to its client, in the client's own protocol."""

    @property
    def started(self) -> bool:
        """Whether any byte of the answer has reached the client."""
        ...

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Add response headers; only before the answer has started."""
        ...

    async def send_text(self, key: str, text: str) -> None:
        """Send text of segment ``key`` as the protocol's text event."""
        ...

    async def end(
        self, reason: str, keys: list[str] | None = None, ticket: Ticket | None = None
    ) -> None:
        """End the stream with ``reason`` (``stop``, ``content_filter``) and its terminator."""
        ...

    async def send_error(self, err: GatewayError) -> None:
        """End the answer with an error in the protocol's format."""
        ...


@dataclass(frozen=True, slots=True)
class AnswerBody:
    """A whole JSON answer a route served, for subsystems that watch what models decide."""

    route: str
    body: Mapping[str, Any]


__all__ = ["AnswerBody", "ClientChannel", "ContainmentPort", "HoldPort", "VariantsPort"]
