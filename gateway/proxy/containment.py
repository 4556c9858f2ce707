"""What a containment switch does to a request (the switch table is the incidents').

``block`` answers without calling any upstream, with the route's kill-switch
message in the client's own wire format. ``review_all`` adds ``HOLD_ALL`` to
the route's policies, so every answer is held for a person. ``fallback`` is
handled by the exchange's attempt loop.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import Route
from gateway.contract.detector import Finding, ScanContext
from gateway.contract.policy import Action, PolicyBase
from gateway.errors import RouteContained
from gateway.policy.loader import CompiledPolicy
from gateway.proxy.adapters import Adapter, RequestInfo
from gateway.proxy.answers import error_response, json_response
from gateway.records.containment import Switch
from gateway.severity import Severity

# breaches of policies with this id prefix are containment's own doing
INTERNAL_PREFIX = "containment."


class _HoldAllScan:
    __slots__ = ()

    def feed(self, text: str, final: bool) -> list[Finding]:
        if not final:
            return []
        return [
            Finding(
                0,
                len(text),
                1.0,
                "the route is contained: every response is held",
                {"containment": "review_all"},
            )
        ]

    def hold_from(self, text: str) -> int:
        # nothing is released before the human decision
        return 0


class _HoldAllDetector:
    hold_back = None
    blocking = False
    # every answer is held, an image-only one too
    modality = "any"

    def start(self, ctx: ScanContext) -> _HoldAllScan:
        return _HoldAllScan()


HOLD_ALL = CompiledPolicy(
    PolicyBase(
        id=INTERNAL_PREFIX + "review-all",
        kind="containment",
        description="Route contained: every response is held for review.",
        action=Action.REVIEW,
        severity=Severity.HIGH,
    ),
    _HoldAllDetector(),
    "<containment>",
)


async def kill_switch(
    request: web.Request,
    route: Route,
    adapter: Adapter,
    info: RequestInfo,
    decision_id: str,
    switch: Switch,
) -> web.StreamResponse:
    """Answer with the route's kill-switch message, calling no upstream."""
    message = route.containment.block_message
    headers = {
        "x-governance-decision": "block",
        "x-governance-decision-id": decision_id,
        "x-governance-containment": switch.mode,
    }
    if not info.stream:
        return json_response(adapter.blocked(info, None, message), headers=headers)
    data = adapter.stream_answer(info, message, decision_id)
    if data is None:
        # no synthetic stream for this protocol: an error in its own format says why
        return error_response(RouteContained(message), adapter, decision_id, headers)
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "text/event-stream"
    resp.headers["cache-control"] = "no-cache"
    await resp.prepare(request)
    await resp.write(data)
    await resp.write_eof()
    return resp
