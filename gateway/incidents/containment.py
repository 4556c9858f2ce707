"""Route containment: fallback, hold everything for review, or a kill switch.

The handler consults ``switch_for`` at the start of every governed request:
one dict lookup on a table kept in memory. The table is written through to
the ``route_containment`` table so a restart keeps every switch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.detectors.base import Finding
from gateway.errors import GatewayError
from gateway.policy.loader import CompiledPolicy
from gateway.policy.models import Action, PolicyBase, Severity
from gateway.proxy.sse import encode_event

MODES = ("fallback", "review_all", "block")
# a stricter switch replaces a weaker one, never the other way round
MODE_RANK = {"fallback": 1, "review_all": 2, "block": 3}

# breaches of this policy are containment's own doing, never a new incident
INTERNAL_PREFIX = "containment."


@dataclass
class Switch:
    route: str
    mode: str
    incident_id: str | None
    actor: str
    reason: str
    since: float
    auto_revert: bool = False
    # pre-bound metric child, so counting a contained request costs no label lookup
    counter: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "mode": self.mode,
            "incident_id": self.incident_id,
            "actor": self.actor,
            "reason": self.reason,
            "since": self.since,
            "auto_revert": self.auto_revert,
        }

    def upsert(self) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT INTO route_containment (route, mode, incident_id, actor, reason, since, "
            "auto_revert) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route) DO UPDATE SET "
            "mode = excluded.mode, incident_id = excluded.incident_id, actor = excluded.actor, "
            "reason = excluded.reason, since = excluded.since, auto_revert = excluded.auto_revert",
            (
                self.route,
                self.mode,
                self.incident_id,
                self.actor,
                self.reason,
                self.since,
                int(self.auto_revert),
            ),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Switch:
        return cls(
            row["route"],
            row["mode"],
            row["incident_id"],
            row["actor"],
            row["reason"],
            row["since"],
            bool(row["auto_revert"]),
        )


def switch_for(gw, route_name: str) -> Switch | None:
    """The switch in force on ``route_name``; the hot-path entry point."""
    service = gw.services.get("incidents")
    if service is None:
        return None
    switch = service.switches.get(route_name)
    if switch is not None and switch.counter is not None:
        switch.counter.inc()
    return switch


# -- review_all: a built-in policy that holds the whole response ------------------
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

    def start(self, ctx) -> _HoldAllScan:
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


# -- block: the kill switch, answered without calling the upstream ----------------
async def blocked_answer(exchange, switch: Switch, message: str) -> web.StreamResponse:
    """Answer ``exchange`` with ``message`` in the client's own wire format."""
    adapter, info = exchange.adapter, exchange.info
    headers = {
        "x-governance-decision": "block",
        "x-governance-decision-id": exchange.decision_id,
        "x-governance-containment": switch.mode,
    }
    if not info.stream:
        body = adapter.blocked(info, None, message)
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=headers
        )
    protocol = adapter.protocol
    if protocol in ("openai-chat", "openai-completions"):
        translator = adapter.translator(info)
        data = translator.render_text("0", message) + translator.cut(
            ["0"], "content_filter", exchange.decision_id
        )
    elif protocol == "anthropic-messages":
        data = _anthropic_stream(adapter.blocked(info, None, message), message)
    else:
        # no synthetic stream for this protocol: an error in its own format says why
        err = GatewayError(message, code="route-contained", status=503)
        return web.Response(
            status=503,
            body=orjson.dumps(adapter.error_body(err)),
            content_type="application/json",
            headers=dict(headers, **{"x-governance-error-code": err.code}),
        )
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "text/event-stream"
    resp.headers["cache-control"] = "no-cache"
    await resp.prepare(exchange.request)
    await resp.write(data)
    await resp.write_eof()
    return resp


def _anthropic_stream(message_obj: dict[str, Any], text: str) -> bytes:
    start = dict(message_obj, content=[], stop_reason=None)
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message_obj["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": 0},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(encode_event(orjson.dumps(obj).decode(), name) for name, obj in events)
