"""Decide on a text or a response body without proxying anything.

Shared by ``gateway check``, ``POST /governance/v1/check`` and the policy
test runner, so all three decide exactly as the proxy does.
"""

from __future__ import annotations

from typing import Any

from gateway.detectors.base import ScanContext
from gateway.errors import BadRequest
from gateway.policy.engine import ResponseGuard
from gateway.policy.loader import CompiledPolicy
from gateway.policy.models import STOPPING_ACTIONS
from gateway.proxy.adapters import Adapter
from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.base import normalize_sources
from gateway.proxy.adapters.openai_chat import ChatAdapter, CompletionsAdapter
from gateway.proxy.adapters.openai_responses import ResponsesAdapter
from gateway.proxy.adapters.rag_json import RagJsonAdapter


def detect_adapter(body: dict[str, Any], rag: RagJsonAdapter | None = None) -> Adapter:
    """Guess a response body's protocol from its shape."""
    if body.get("object") == "response" or isinstance(body.get("output"), list):
        return ResponsesAdapter()
    if body.get("type") == "message" and isinstance(body.get("content"), list):
        return AnthropicAdapter()
    choices = body.get("choices")
    if isinstance(choices, list) and choices:
        first = choices[0] if isinstance(choices[0], dict) else {}
        return ChatAdapter() if "message" in first else CompletionsAdapter()
    if rag is not None:
        return rag
    raise BadRequest(
        "cannot tell the protocol of this JSON body: expected an OpenAI chat, completions or "
        "responses body, or an Anthropic message"
    )


async def evaluate(
    policies: list[CompiledPolicy],
    segments: list[tuple[str, str]],
    ctx: ScanContext,
    *,
    chunk: int | None = None,
    thread_runner=None,
) -> ResponseGuard:
    """Scan ``segments`` whole, or in ``chunk``-sized pieces as a stream would arrive."""
    guard = ResponseGuard(policies, ctx, thread_runner=thread_runner)
    for key, text in segments:
        if chunk:
            for i in range(0, len(text), chunk):
                await guard.feed(key, text[i : i + chunk])
                if guard.stopped:
                    break
            if not guard.stopped:
                await guard.finish(key)
        else:
            await guard.feed(key, text, final=True)
        if guard.stopped:
            break
    guard.close()
    return guard


def decision_json(guard: ResponseGuard, revision: str | None = None) -> dict[str, Any]:
    action = guard.action()
    out: dict[str, Any] = {
        "decision_id": guard.decision_id,
        "action": action.value,
        "breached": guard.breached(),
        "policies": guard.policy_records(),
    }
    if revision:
        out["revision"] = revision
    if action not in STOPPING_ACTIONS:
        out["text"] = {key: seg.released_text for key, seg in guard.segments.items()}
    return out


def context_for(
    route: str, *, query: str | None = None, sources: Any = None, request: dict | None = None
) -> ScanContext:
    items, errors = normalize_sources(sources, "sources") if sources is not None else ([], [])
    return ScanContext(
        route=route, query=query, sources=items, source_errors=errors, request=request
    )


def parse_input(
    payload: str | dict[str, Any], rag: RagJsonAdapter | None = None
) -> tuple[list[tuple[str, str]], list[dict], list[str], str | None]:
    """Segments, sources, source errors and protocol name for a text or a JSON body."""
    if isinstance(payload, str):
        return [("0", payload)], [], [], None
    adapter = detect_adapter(payload, rag)
    found = adapter.sources(payload)
    return adapter.segments(payload), found.items, found.errors, adapter.protocol
