"""Reviewer API on the admin listener, under ``/governance/v1/reviews``.

The admin app's middleware already demands a bearer token with at least the
``reviewer`` role here. The one exception is the client's result poll,
which is authenticated by the API key the held request was made with.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway.admin import json_body, json_response
from gateway.auth import PRINCIPAL, TOKENS
from gateway.errors import BadRequest, GatewayError
from gateway.proxy.adapters.base import openai_error
from gateway.proxy.state import GATEWAY
from gateway.review.service import ReviewService, public_view

BASE = "/governance/v1/reviews"
_RESULT = re.compile(r"/governance/v1/reviews/([0-9a-f]{32})/result")
_SEVERITIES = ("low", "medium", "high", "critical")


def service(request: web.Request) -> ReviewService:
    return request.app[GATEWAY].services["review"]


def parse_filters(query, principal_name: str | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {}
    state = query.get("state", "pending")
    if state not in ("", "all", "pending", "approved", "rejected", "expired"):
        raise BadRequest("state must be pending, approved, rejected, expired or all")
    f["state"] = None if state in ("", "all") else state
    for name in ("policy", "route", "tenant"):
        if query.get(name):
            f[name] = query[name]
    if query.get("severity"):
        if query["severity"] not in _SEVERITIES:
            raise BadRequest(f"severity must be one of {', '.join(_SEVERITIES)}")
        f["severity"] = query["severity"]
    assignee = query.get("assignee")
    if assignee == "me" and principal_name:
        assignee = principal_name
    if assignee:
        f["assignee"] = assignee
    overdue = query.get("overdue")
    if overdue in ("1", "true", "yes"):
        f["overdue"] = True
    elif overdue in ("0", "false", "no"):
        f["overdue"] = False
    return f


def _int(query, name: str, default: int, top: int) -> int:
    try:
        return max(0, min(int(query.get(name, default)), top))
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None


async def list_items(request: web.Request) -> web.Response:
    svc = service(request)
    principal = request[PRINCIPAL]
    filters = parse_filters(request.query, principal.name)
    items, total = await svc.db.list_items(
        filters,
        limit=_int(request.query, "limit", 100, 1000),
        offset=_int(request.query, "offset", 0, 10**9),
        sort=request.query.get("sort", "sla"),
    )
    counts = await svc.db.counts()
    return json_response(
        {"items": [public_view(i) for i in items], "total": total, "counts": counts}
    )


async def stats(request: web.Request) -> web.Response:
    svc = service(request)
    counts = await svc.refresh_metrics()
    return json_response({"counts": counts, "approval_rates": await svc.db.approval_rates()})


async def detail(request: web.Request) -> web.Response:
    svc = service(request)
    item = await svc.get(request.match_info["id"])
    return json_response(
        {
            "item": public_view(item),
            "audit": await svc.db.audit(item["id"]),
            "comments": await svc.db.comments(item["id"]),
            "callbacks": await svc.db.callbacks_for(item["id"]),
        }
    )


async def audit(request: web.Request) -> web.Response:
    svc = service(request)
    item_id = request.match_info["id"]
    return json_response({"audit": await svc.db.audit(item_id)})


async def act(request: web.Request) -> web.Response:
    svc = service(request)
    principal = request[PRINCIPAL]
    item_id = request.match_info["id"]
    action = request.match_info["action"]
    data = await json_body(request)
    version = data.get("version")
    if action == "claim":
        item = await svc.claim(item_id, principal, version)
    elif action == "release":
        item = await svc.release(item_id, principal, version)
    elif action == "approve":
        edited = data.get("edited")
        if edited is None and isinstance(data.get("text"), str):
            current = await svc.get(item_id)
            keys = current["record"].get("segment_keys") or ["0"]
            edited = {keys[0]: data["text"]}
        item = await svc.approve(item_id, principal, version, edited, str(data.get("note") or ""))
    elif action == "reject":
        item = await svc.reject(item_id, principal, version, str(data.get("reason") or ""))
    elif action == "escalate":
        item = await svc.escalate(item_id, principal, version, str(data.get("note") or ""))
    else:
        raise BadRequest(f"unknown action {action!r}")
    return json_response({"item": public_view(item)})


async def comment(request: web.Request) -> web.Response:
    svc = service(request)
    data = await json_body(request)
    created = await svc.comment(
        request.match_info["id"], request[PRINCIPAL], str(data.get("body") or "")
    )
    return json_response({"comment": created}, 201)


async def bulk(request: web.Request) -> web.Response:
    principal = request.app[TOKENS].require(request, "lead")
    data = await json_body(request)
    results = await service(request).bulk(
        principal,
        str(data.get("action") or ""),
        data.get("items") or [],
        str(data.get("reason") or ""),
    )
    status = 200 if all(r["ok"] for r in results) else 207
    return json_response({"results": results}, status)


async def allowlist(request: web.Request) -> web.Response:
    from gateway.review.allowlist import add_to_allowlist

    principal = request.app[TOKENS].require(request, "lead")
    data = await json_body(request)
    svc = service(request)
    item = await svc.get(request.match_info["id"])
    outcome = await add_to_allowlist(svc, item, principal, data.get("policy"), data.get("finding"))
    return json_response(outcome, 200 if outcome["applied"] else 422)


async def result_for_reviewer(request: web.Request) -> web.Response:
    svc = service(request)
    item = await svc.get(request.match_info["id"])
    body = svc.result_body(item)
    body.pop("texts", None)
    return json_response(body)


@web.middleware
async def client_result(request: web.Request, handler):
    """Serve the client's result poll, authenticated by its own API key.

    Placed before the admin app's token check: a client holds an API key for
    the model, not a governance token. A request that carries a governance
    token goes the usual way.
    """
    match = _RESULT.fullmatch(request.path)
    if match is None or request.method not in ("GET", "HEAD"):
        return await handler(request)
    if request.app[TOKENS].from_request(request) is not None:
        return await handler(request)
    try:
        return await service(request).client_result(request, match.group(1))
    except GatewayError as err:
        return json_response(openai_error(err), err.status)


async def client_result_on_proxy(request: web.Request) -> web.Response:
    """The same poll on the proxy listener, the one address a client already knows."""
    try:
        return await service(request).client_result(request, request.match_info["id"])
    except GatewayError as err:
        return json_response(openai_error(err), err.status)


def install_proxy_routes(app: web.Application) -> None:
    app.router.add_get(BASE + "/{id:[0-9a-f]{32}}/result", client_result_on_proxy)


def install_routes(app: web.Application) -> None:
    app.middlewares.insert(0, client_result)
    app.router.add_get(BASE, list_items)
    app.router.add_get(f"{BASE}/stats", stats)
    app.router.add_post(f"{BASE}/bulk", bulk)
    app.router.add_get(BASE + "/{id}", detail)
    app.router.add_get(BASE + "/{id}/audit", audit)
    app.router.add_get(BASE + "/{id}/result", result_for_reviewer)
    app.router.add_post(BASE + "/{id}/comments", comment)
    app.router.add_post(BASE + "/{id}/allowlist", allowlist)
    app.router.add_post(BASE + "/{id}/{action:claim|release|approve|reject|escalate}", act)
