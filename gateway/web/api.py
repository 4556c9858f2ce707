"""JSON in and out of the governance API, and its errors.

The governance API answers errors as OpenAI-shaped JSON (``{"error":
{"message", "type", "param", "code"}}``), so one client library can read
both the proxy's and the admin listener's errors.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import BadRequest, GatewayError
from gateway.proxy.adapters.base import openai_error


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_json(err: GatewayError) -> web.Response:
    return json_response(openai_error(err), err.status)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (empty when there is no body), or a clear 400."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object")
    return body


def text_field(body: dict[str, Any], name: str) -> str:
    """A string field of a JSON body ("" when absent), or a clear 400."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f'"{name}" must be a string')
    return value
