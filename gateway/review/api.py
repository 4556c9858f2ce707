"""Reviewer API on the admin listener, under ``/governance/v1/reviews``.

The admin app's middleware already demands a bearer token with at least the
``reviewer`` role here. The one exception is the client's result poll,
which is authenticated by the API key the held request was made with, and
is served on the proxy listener too: the one address a client already knows.
"""

from __future__ import annotations

import hmac
import re
import time
from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound, Unauthorized
from gateway.proxy.credentials import api_key_id
from gateway.records.review import STATES
from gateway.review.allowlist import add_to_allowlist
from gateway.review.api_models import (
    ActionRequest,
    AllowlistOutcome,
    AllowlistRequest,
    BulkRequest,
    BulkResults,
    CommentCreated,
    CommentRequest,
    ReviewActed,
    ReviewAudit,
    ReviewDetail,
    ReviewList,
    ReviewResult,
    ReviewStats,
)
from gateway.review.items import public_view
from gateway.review.service import REVIEW, ReviewService
from gateway.severity import Severity
from gateway.web.api import error_json, json_body, json_response
from gateway.web.auth import PRINCIPAL, TOKENS
from gateway.web.openapi import ErrorBody, describe

BASE = "/governance/v1/reviews"
_RESULT = re.compile(r"/governance/v1/reviews/([0-9a-f]{32})/result")
_SEVERITIES = tuple(s.value for s in Severity)


def parse_filters(query, principal_name: str | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {}
    state = query.get("state", "pending")
    if state not in ("", "all", *STATES):
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


@describe(
    summary="The review queue",
    tags=("reviews",),
    query={
        "state": "pending (default), approved, rejected, expired or all",
        "policy": "",
        "route": "",
        "tenant": "",
        "severity": "",
        "assignee": "a name, or me",
        "overdue": "true or false",
        "limit": "",
        "offset": "",
        "sort": "sla (default)",
    },
    responses={200: ReviewList, 400: ErrorBody},
)
async def list_items(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    principal = request[PRINCIPAL]
    filters = parse_filters(request.query, principal.name)
    items, total = await svc.db.list_items(
        filters,
        limit=_int(request.query, "limit", 100, 1000),
        offset=_int(request.query, "offset", 0, 10**9),
        sort=request.query.get("sort", "sla"),
    )
    counts = await svc.db.counts()
    now = time.time()
    rows = [dict(i.to_json(), overdue_now=i.overdue_at(now)) for i in items]
    return json_response({"items": rows, "total": total, "counts": counts})


@describe(
    summary="Queue counts and approval rates per policy",
    tags=("reviews",),
    responses={200: ReviewStats},
)
async def stats(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    counts = await svc.sweeper.refresh_metrics()
    return json_response({"counts": counts, "approval_rates": await svc.db.approval_rates()})


@describe(
    summary="One review item with its audit, comments and callbacks",
    tags=("reviews",),
    responses={200: ReviewDetail, 404: ErrorBody},
)
async def detail(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    item = await svc.actions.get(request.match_info["id"])
    return json_response(
        {
            "item": public_view(item),
            "audit": await svc.db.audit(item.id),
            "comments": await svc.db.comments(item.id),
            "callbacks": await svc.db.callbacks_for(item.id),
        }
    )


@describe(
    summary="The audit trail of a review item", tags=("reviews",), responses={200: ReviewAudit}
)
async def audit(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    return json_response({"audit": await svc.db.audit(request.match_info["id"])})


@describe(
    summary="Claim, release, approve, reject or escalate a review item",
    tags=("reviews",),
    request=ActionRequest,
    responses={200: ReviewActed, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody},
)
async def act(request: web.Request) -> web.Response:
    actions = request.app[REVIEW].actions
    principal = request[PRINCIPAL]
    item_id = request.match_info["id"]
    action = request.match_info["action"]
    data = await json_body(request)
    version = data.get("version")
    if action == "claim":
        item = await actions.claim(item_id, principal, version)
    elif action == "release":
        item = await actions.release(item_id, principal, version)
    elif action == "approve":
        edited = data.get("edited")
        if edited is None and isinstance(data.get("text"), str):
            current = await actions.get(item_id)
            keys = current.record.segment_keys or ("0",)
            edited = {keys[0]: data["text"]}
        item = await actions.approve(
            item_id, principal, version, edited, str(data.get("note") or "")
        )
    elif action == "reject":
        item = await actions.reject(item_id, principal, version, str(data.get("reason") or ""))
    elif action == "escalate":
        item = await actions.escalate(item_id, principal, version, str(data.get("note") or ""))
    else:
        raise BadRequest(f"unknown action {action!r}")
    return json_response({"item": public_view(item)})


@describe(
    summary="Comment on a review item",
    tags=("reviews",),
    request=CommentRequest,
    responses={201: CommentCreated, 404: ErrorBody},
)
async def comment(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    data = await json_body(request)
    created = await svc.actions.comment(
        request.match_info["id"], request[PRINCIPAL], str(data.get("body") or "")
    )
    return json_response({"comment": created}, 201)


@describe(
    summary="Approve or reject many items",
    tags=("reviews",),
    auth="lead",
    request=BulkRequest,
    responses={200: BulkResults, 207: BulkResults, 400: ErrorBody},
)
async def bulk(request: web.Request) -> web.Response:
    principal = request.app[TOKENS].require(request, "lead")
    data = await json_body(request)
    results = await request.app[REVIEW].actions.bulk(
        principal,
        str(data.get("action") or ""),
        data.get("items") or [],
        str(data.get("reason") or ""),
    )
    status = 200 if all(r["ok"] for r in results) else 207
    return json_response({"results": results}, status)


@describe(
    summary="Allow a finding of this item in its policy file",
    tags=("reviews",),
    auth="lead",
    request=AllowlistRequest,
    responses={200: AllowlistOutcome, 400: ErrorBody, 404: ErrorBody, 422: AllowlistOutcome},
)
async def allowlist(request: web.Request) -> web.Response:
    principal = request.app[TOKENS].require(request, "lead")
    data = await json_body(request)
    svc = request.app[REVIEW]
    item = await svc.actions.get(request.match_info["id"])
    outcome = await add_to_allowlist(
        svc.db, svc.policies, item, principal, data.get("policy"), data.get("finding")
    )
    return json_response(outcome, 200 if outcome["applied"] else 422)


@describe(
    summary="The outcome the client sees",
    tags=("reviews",),
    description=(
        "A client may poll this path with the API key its held request was made with"
        " instead of a token."
    ),
    responses={200: ReviewResult, 404: ErrorBody},
)
async def result_for_reviewer(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    item = await svc.actions.get(request.match_info["id"])
    return json_response(svc.outcome(item).to_json())


async def client_result(svc: ReviewService, request: web.Request, item_id: str) -> web.Response:
    """The outcome for the client that made the held request, checked by its API key."""
    key_id = api_key_id(request.headers)
    if key_id is None:
        raise Unauthorized("send the API key the held request was made with")
    item = await svc.db.get(item_id)
    if item is None:
        raise NotFound(f"no review item {item_id}")
    if item.key_id is None or not hmac.compare_digest(item.key_id, key_id):
        raise Forbidden("this review item belongs to another API key")
    return json_response(svc.outcome(item).to_json(), headers={"cache-control": "no-store"})


@web.middleware
async def client_result_first(request: web.Request, handler):
    """Serve the client's result poll before the admin app's token check.

    A client holds an API key for the model, not a governance token. A
    request that carries a governance token goes the usual way.
    """
    match = _RESULT.fullmatch(request.path)
    if match is None or request.method not in ("GET", "HEAD"):
        return await handler(request)
    if request.app[TOKENS].from_request(request) is not None:
        return await handler(request)
    try:
        return await client_result(request.app[REVIEW], request, match.group(1))
    except GatewayError as err:
        return error_json(err)


async def client_result_on_proxy(request: web.Request) -> web.Response:
    try:
        return await client_result(request.app[REVIEW], request, request.match_info["id"])
    except GatewayError as err:
        return error_json(err)


def install_proxy(app: web.Application) -> None:
    app.router.add_get(BASE + "/{id:[0-9a-f]{32}}/result", client_result_on_proxy)


def install(app: web.Application) -> None:
    app.middlewares.insert(0, client_result_first)
    app.router.add_get(BASE, list_items)
    app.router.add_get(f"{BASE}/stats", stats)
    app.router.add_post(f"{BASE}/bulk", bulk)
    app.router.add_get(BASE + "/{id}", detail)
    app.router.add_get(BASE + "/{id}/audit", audit)
    app.router.add_get(BASE + "/{id}/result", result_for_reviewer)
    app.router.add_post(BASE + "/{id}/comments", comment)
    app.router.add_post(BASE + "/{id}/allowlist", allowlist)
    app.router.add_post(BASE + "/{id}/{action:claim|release|approve|reject|escalate}", act)
