"""Responses the gateway itself writes: JSON answers, errors, and what a client is told."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.contract.policy import Action, PolicyBase
from gateway.errors import GatewayError
from gateway.proxy.adapters import Adapter

HELD_MESSAGE = "This response is held for review."
WITHHELD_MESSAGE = "The response was withheld by a governance policy."


def client_message(config: PolicyBase | None, action: Action) -> str:
    """What the client is told when ``config``'s policy withholds an answer."""
    if config is None:
        return WITHHELD_MESSAGE
    if action is Action.REVIEW and "message" not in config.model_fields_set:
        return HELD_MESSAGE
    return config.message


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=CIMultiDict(headers or {}),
    )


def error_response(
    err: GatewayError, adapter: Adapter, decision_id: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``err`` in the client's protocol, with the decision headers."""
    out = {
        "x-governance-decision": "error",
        "x-governance-decision-id": decision_id,
        "x-governance-error-code": err.code,
    }
    out.update(headers or {})
    return json_response(adapter.error_body(err), status=err.status, headers=out)
