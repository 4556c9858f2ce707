"""Protocol adapters, and the one place that picks them.

``Adapters`` is built once from the configured routes. The listener asks it,
from the path and headers alone and before any body is read, which adapter
answers this client (so even a malformed body gets an error in the client's
own protocol), and then, once the route is known, which adapter governs the
exchange. Subsystems that rebuild an answer later (a review outcome) ask it
for the adapter a stored item was held under.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config import Route
from gateway.contract.sources import Sources
from gateway.errors import BadRequest, UpstreamMalformed
from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.base import Adapter, RequestInfo
from gateway.proxy.adapters.openai_chat import ChatAdapter, CompletionsAdapter
from gateway.proxy.adapters.openai_images import ImagesAdapter
from gateway.proxy.adapters.openai_responses import ResponsesAdapter
from gateway.proxy.adapters.rag_json import RagJsonAdapter

_CHAT = ChatAdapter()
_COMPLETIONS = CompletionsAdapter()
_RESPONSES = ResponsesAdapter()
_ANTHROPIC = AnthropicAdapter()
_IMAGES = ImagesAdapter()
_BUILTIN: dict[str, Adapter] = {
    a.protocol: a for a in (_CHAT, _COMPLETIONS, _RESPONSES, _ANTHROPIC, _IMAGES)
}

# the conversation protocols a client of ours (``gateway gate``) can speak, by the
# names its command line uses
CONVERSATIONS: dict[str, Adapter] = {"openai": _CHAT, "anthropic": _ANTHROPIC}

# path suffix -> adapter; /chat/completions also ends in /completions, so the
# listed order tries it first
_BY_SUFFIX: tuple[tuple[str, Adapter], ...] = (
    ("/chat/completions", _CHAT),
    ("/completions", _COMPLETIONS),
    ("/responses", _RESPONSES),
    ("/messages", _ANTHROPIC),
    ("/images/generations", _IMAGES),
    ("/images/edits", _IMAGES),
    ("/images/variations", _IMAGES),
)
_ROUTE_PROTOCOLS: dict[str, frozenset[Adapter]] = {
    "openai": frozenset({_CHAT, _COMPLETIONS, _RESPONSES, _IMAGES}),
    "anthropic": frozenset({_ANTHROPIC}),
    "auto": frozenset({_CHAT, _COMPLETIONS, _RESPONSES, _ANTHROPIC, _IMAGES}),
}


class Adapters:
    def __init__(self, routes: Iterable[Route]):
        self._routes = list(routes)
        self._rag: dict[str, RagJsonAdapter] = {
            r.name: RagJsonAdapter(**r.rag.model_dump())
            for r in self._routes
            if r.protocol == "rag-json"
        }

    def for_route(self, route: Route, path: str) -> Adapter | None:
        """The adapter governing ``path`` on ``route``; None means pass through."""
        rag = self._rag.get(route.name)
        if rag is not None:
            return rag
        path = path.rstrip("/")
        allowed = _ROUTE_PROTOCOLS.get(route.protocol, frozenset())
        for suffix, adapter in _BY_SUFFIX:
            if path.endswith(suffix):
                return adapter if adapter in allowed else None
        return None

    def candidate(self, path: str) -> Adapter | None:
        """The adapter the first route serving ``path`` would govern it with, if any.

        Known from the path alone, before the body (and so the model, which
        may pick another route) is read: it decides whether the body must be
        JSON and how errors are shaped.
        """
        for route in self._routes:
            if path.startswith(route.path_prefix):
                adapter = self.for_route(route, path)
                if adapter is not None:
                    return adapter
        return None

    @staticmethod
    def by_headers(headers: Mapping[str, str]) -> Adapter:
        """Who answers a client on a path no adapter governs (its errors, its key header)."""
        # an Anthropic SDK always sends its API version, on every path
        return _ANTHROPIC if "anthropic-version" in headers else _CHAT

    def named(self, protocol: str, route: str) -> Adapter | None:
        """The adapter a stored item was held under (its ``protocol`` and route)."""
        rag = self._rag.get(route)
        if rag is not None and rag.protocol == protocol:
            return rag
        return _BUILTIN.get(protocol)

    def detect(self, body: dict[str, Any], route: str | None = None) -> Adapter:
        """Guess a whole response body's protocol from its shape."""
        if body.get("object") == "response" or isinstance(body.get("output"), list):
            return _RESPONSES
        if body.get("type") == "message" and isinstance(body.get("content"), list):
            return _ANTHROPIC
        if isinstance(body.get("data"), list) and "created" in body:
            return _IMAGES
        choices = body.get("choices")
        if isinstance(choices, list) and choices:
            first = choices[0] if isinstance(choices[0], dict) else {}
            return _CHAT if "message" in first else _COMPLETIONS
        rag = self._rag.get(route or "")
        if rag is not None:
            return rag
        raise BadRequest(
            "cannot tell the protocol of this JSON body: expected an OpenAI chat, completions or "
            "responses body, or an Anthropic message"
        )


def parse_answer(
    payload: str | dict[str, Any], adapters: Adapters, route: str | None = None
) -> tuple[list[tuple[str, str]], Sources, str | None]:
    """Segments, sources and protocol of a text or of a whole response body.

    The body is the caller's own (``gateway check``, the check API), so a
    shape the adapter cannot read is their bad request, not a bad upstream.
    """
    if isinstance(payload, str):
        return [("0", payload)], Sources(), None
    adapter = adapters.detect(payload, route)
    try:
        return adapter.segments(payload), adapter.sources(payload), adapter.protocol
    except UpstreamMalformed as err:
        message = err.message.replace("upstream sent", "the response has", 1)
        raise BadRequest(f"{adapter.protocol} response: {message}") from None


__all__ = [
    "CONVERSATIONS",
    "Adapter",
    "Adapters",
    "RequestInfo",
    "Sources",
    "parse_answer",
]
