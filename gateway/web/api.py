"""JSON in and out of the governance API, and its errors.

The governance API answers errors as OpenAI-shaped JSON (``{"error":
{"message", "type", "param", "code"}}``), so one client library can read
both the proxy's and the admin listener's errors. aiohttp's own HTTP
exceptions (an unknown path, a wrong method, a body over the size limit)
get the same shape and a code of ours.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from gateway.proxy.adapters.base import openai_error


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_json(err: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(openai_error(err), err.status, headers)


# the codes aiohttp's own client errors get; other 4xx keep their status as invalid-request
_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    """The gateway error for an error status aiohttp raised itself (routing, body limits)."""
    if exc.status >= 500:
        return InternalError("the request failed; the gateway log has the details")
    if exc.status == 404:
        return NotFound(f"nothing at {request.path}")
    if exc.status == 405:
        allowed = exc.headers.get("allow", "")
        return MethodNotAllowed(
            f"{request.path} does not take {request.method}; it takes {allowed or 'nothing'}"
        )
    text = exc.text or ""
    # aiohttp's default body is just "413: Request Entity Too Large"; a specific one says more
    message = exc.reason if text.startswith(f"{exc.status}:") or not text else text
    err = _HTTP_ERRORS.get(exc.status, BadRequest)(message)
    # the status stays what aiohttp said (415, 431…); the code is the stable part
    err.status = exc.status
    return err


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
