"""Decide on a text without proxying anything.

Shared by ``gateway check``, ``POST /governance/v1/check`` and the policy
test runner, so all three decide exactly as the proxy does.
"""

from __future__ import annotations

from typing import Any

from gateway.contract.detector import ImagePart, ScanContext
from gateway.contract.policy import STOPPING_ACTIONS
from gateway.contract.sources import normalize_sources
from gateway.policy.engine import ResponseGuard
from gateway.policy.loader import CompiledPolicy


async def evaluate(
    policies: list[CompiledPolicy],
    segments: list[tuple[str, str]],
    ctx: ScanContext,
    *,
    chunk: int | None = None,
    thread_runner=None,
    images: list[tuple[str, ImagePart]] | None = None,
) -> ResponseGuard:
    """Scan ``segments`` whole, or in ``chunk``-sized pieces as a stream would arrive,
    then ``images`` (each an image segment)."""
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
    for key, image in images or []:
        if guard.stopped:
            break
        await guard.feed_image(key, image)
    guard.close()
    return guard


def decision_json(guard: ResponseGuard, revision: str | None = None) -> dict[str, Any]:
    action = guard.action()
    out: dict[str, Any] = {
        "decision_id": guard.decision_id,
        "action": action.value,
        "breached": guard.breached(),
        "policies": [v.to_json() for v in guard.verdicts()],
    }
    if revision:
        out["revision"] = revision
    if action not in STOPPING_ACTIONS:
        out["text"] = {key: seg.released_text for key, seg in guard.segments.items()}
    return out


def context_for(
    route: str, *, query: str | None = None, sources: Any = None, request: dict | None = None
) -> ScanContext:
    """A scan context with ``sources`` (as a client or a test file gives them) normalised."""
    items, errors = normalize_sources(sources, "sources") if sources is not None else ([], [])
    return ScanContext(
        route=route, query=query, sources=items, source_errors=errors, request=request
    )
