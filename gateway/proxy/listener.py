"""The proxy listener's one handler: pick the client's adapter, read, route, govern.

The adapter that speaks the client's protocol is chosen from the path and
headers before the body is read, so a malformed, oversized or non-object
body already gets an error in the client's own format. A path no adapter
governs (``/v1/models``, embeddings…) passes through untouched.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.config import Limits, Route
from gateway.errors import (
    BadRequest,
    GatewayError,
    InternalError,
    LimitsUnavailable,
    NoRoute,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
)
from gateway.observability.logs import decision_id_var
from gateway.policy.engine import new_decision_id
from gateway.proxy import upstream as up
from gateway.proxy.adapters import Adapter
from gateway.proxy.answers import error_response
from gateway.proxy.exchange import Exchange
from gateway.proxy.state import GATEWAY, Gateway
from gateway.proxy.variants import pick as pick_variant

log = logging.getLogger(__name__)

DOUBLED_V1 = "/v1/v1/"


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    decision_id = new_decision_id()
    decision_id_var.set(decision_id)
    # who the client is, from the path and headers alone: errors from here on are in its format
    candidate = gw.adapters.candidate(request.path)
    adapter = candidate or gw.adapters.by_headers(request.headers)
    try:
        if request.path.startswith("/governance/"):
            # never forward governance paths (and the tokens they carry) upstream
            raise NotFound("the governance API is served on the admin listener")
        body = b""
        if request.method in ("POST", "PUT", "PATCH"):
            body = await read_request_body(request, gw.settings.limits)
        # a path an adapter governs is governed on POST; everything else passes through
        parsed: dict[str, Any] | None = None
        model = None
        if request.method == "POST" and candidate is not None:
            if request.content_type == "multipart/form-data":
                # an image edit's form: its text fields, the files stay in the body
                parsed = candidate.parse_form(body, request.headers.get("content-type", ""))
            else:
                parsed = parse_json_body(body)
            model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        route, variant = pick_variant(
            choose_route(gw, request.path, model), request.headers, gw.variants
        )
        governed = gw.adapters.for_route(route, request.path) if parsed is not None else None
        if governed is None or parsed is None:
            await gw.limiter.admit(route, request.headers, stream=False)
            return await passthrough(gw, request, route, body, decision_id, adapter, variant)
        adapter = governed
        info = adapter.request_info(parsed)
        if not info.stream:
            await gw.limiter.admit(route, request.headers, stream=False)
            return await Exchange(
                gw, request, route, adapter, info, body, decision_id, variant
            ).run()
        limits = gw.settings.limits
        if gw.streams >= limits.max_streams:
            gw.metrics.shed.labels("streams").inc()
            raise Overloaded(
                f"{gw.streams} streamed answers are in flight, the limit; retry shortly",
                limits.retry_after,
            )
        # the client's own stream slot, held until the stream ends however it ends
        held = await gw.limiter.admit(route, request.headers, stream=True)
        gw.streams += 1
        try:
            return await Exchange(
                gw, request, route, adapter, info, body, decision_id, variant
            ).run()
        finally:
            gw.streams -= 1
            await gw.limiter.release(held)
    except (Overloaded, RateLimited, LimitsUnavailable) as err:
        retry = {"retry-after": str(err.retry_after)}
        return error_response(err, adapter, decision_id, headers=retry)
    except GatewayError as err:
        return error_response(err, adapter, decision_id)
    except (asyncio.CancelledError, web.HTTPException):
        raise
    except Exception:
        # a bug of ours still answers in the client's format, and is logged loudly
        log.exception("internal error while handling %s %s", request.method, request.path)
        failure = InternalError("the gateway failed to handle this request")
        return error_response(failure, adapter, decision_id)


async def read_request_body(request: web.Request, limits: Limits) -> bytes:
    limit = limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limit}"
        )
    if request.content.is_eof():
        # the usual case: the whole body came with the headers, nothing to wait for
        return await _read_body(request, limit)
    try:
        # a client trickling its body must not hold the connection and the buffer forever
        async with asyncio.timeout(limits.body_timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limits.body_timeout:g}s"
        ) from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    return bytes(body)


def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("the request body is empty; expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(parsed).__name__}")
    return parsed


def choose_route(gw: Gateway, path: str, model: str | None) -> Route:
    if path.startswith(DOUBLED_V1) and not any(
        r.path_prefix.startswith(DOUBLED_V1) for r in gw.settings.routes
    ):
        # a base URL ending in /v1 given to an SDK that adds its own: forwarded, the
        # upstream's 404 would come back looking like an answer the gateway allowed
        raise NoRoute(
            f"no route serves {path}: the path repeats /v1, so the client's base URL "
            "ends in /v1 and the SDK adds another; for the Anthropic SDK set the base URL "
            "to the gateway's root, without /v1 (for the OpenAI SDK, end it in /v1 once)"
        )
    for route in gw.settings.routes:
        if not path.startswith(route.path_prefix):
            continue
        if route.models and not (
            model and any(fnmatch.fnmatchcase(model, m) for m in route.models)
        ):
            continue
        return route
    raise NoRoute(f"no route serves {path}" + (f" for model {model!r}" if model else ""))


async def passthrough(
    gw: Gateway,
    request: web.Request,
    route: Route,
    body: bytes,
    decision_id: str,
    adapter: Adapter,
    variant: str | None = None,
) -> web.StreamResponse:
    """Forward an ungoverned request (``/v1/models``, embeddings…) untouched."""
    gw.metrics.passthrough.labels(route.name).inc()
    headers = up.upstream_headers(request.headers, route, adapter.credential_header)
    url = up.upstream_url(route, request.path, request.query_string)
    resp = await up.send(gw.http, route, request.method, url, headers, body or None)
    try:
        out = web.StreamResponse(status=resp.status, headers=up.response_headers(resp.headers))
        if "content-type" in resp.headers:
            out.content_type = resp.content_type
        out.headers["x-governance-decision"] = "passthrough"
        out.headers["x-governance-decision-id"] = decision_id
        if variant is not None:
            out.headers["x-governance-variant"] = variant
        await out.prepare(request)
        try:
            async with asyncio.timeout(route.timeouts.total):
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("passthrough body from %s broke off: %s", route.name, exc)
            return out
        await out.write_eof()
        return out
    finally:
        resp.close()
