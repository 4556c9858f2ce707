"""Protocol adapters, chosen by route protocol and request path."""

from __future__ import annotations

from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.base import Adapter, RequestInfo
from gateway.proxy.adapters.openai_chat import ChatAdapter, CompletionsAdapter
from gateway.proxy.adapters.openai_responses import ResponsesAdapter
from gateway.proxy.adapters.rag_json import RagJsonAdapter

# path suffix -> adapter, for the openai / anthropic / auto protocols
_BY_PATH: dict[str, Adapter] = {
    "/chat/completions": ChatAdapter(),
    "/completions": CompletionsAdapter(),
    "/responses": ResponsesAdapter(),
    "/messages": AnthropicAdapter(),
}
_PROTOCOL_PATHS = {
    "openai": ("/chat/completions", "/completions", "/responses"),
    "anthropic": ("/messages",),
    "auto": ("/chat/completions", "/completions", "/responses", "/messages"),
}


def adapter_for(protocol: str, path: str, rag: RagJsonAdapter | None = None) -> Adapter | None:
    """The adapter that governs ``path`` on a route of ``protocol``; None passes through."""
    if protocol == "rag-json":
        return rag
    path = path.rstrip("/")
    # /chat/completions also ends in /completions: the listed order tries it first
    for suffix in _PROTOCOL_PATHS.get(protocol, ()):
        if path.endswith(suffix):
            return _BY_PATH[suffix]
    return None


__all__ = ["Adapter", "RequestInfo", "RagJsonAdapter", "adapter_for"]
