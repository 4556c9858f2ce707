"""The admin listener: health, metrics, the core governance API, and the UIs' shell.

Everything under ``/governance/`` needs a bearer token; health and metrics
are open, as scrapers and orchestrators expect. Subsystems add their own API
paths and pages through their ``admin_routes`` hook.

Whatever goes wrong, the answer is ours: a JSON error with a stable code (an
HTML error page on the UI's pages), never aiohttp's plain-text 404, 405 or
500.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.admin_models import (
    CheckRequest,
    CheckResult,
    DecisionList,
    Health,
    PolicyList,
    Readiness,
    Reloaded,
    ReloadFailed,
)
from gateway.admin_models import Decision as DecisionBody
from gateway.errors import (
    BadRequest,
    ConfigError,
    GatewayError,
    InternalError,
    NotFound,
    StoreUnavailable,
)
from gateway.policy.check import context_for, decision_json, evaluate
from gateway.proxy.adapters import parse_answer
from gateway.proxy.adapters.base import openai_error
from gateway.proxy.state import GATEWAY, Gateway
from gateway.web.api import error_json, from_http_exception, json_body, json_response
from gateway.web.auth import PRINCIPAL, SIDE_ROLES, TOKENS, TokenBook
from gateway.web.openapi import ErrorBody, Text, describe, operation_of
from gateway.web.openapi import install as install_openapi
from gateway.web.pages import PAGES, VIEWER, Pages, Viewer, install_pages, viewer_of
from gateway.web.sessions import SESSIONS, SessionBook

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

# bodies of ours that an HTTP exception may carry (a 403 page); aiohttp's own are text/plain
OUR_BODIES = ("text/html", "application/json")


@web.middleware
async def errors(request: web.Request, handler):
    """The outermost middleware: every failure becomes an answer of ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type in OUR_BODIES:
            # a redirect, or an error page already rendered
            raise
        extra = {"allow": exc.headers["allow"]} if "allow" in exc.headers else None
        return await failure(request, from_http_exception(exc, request), extra)
    except StoreUnavailable as err:
        log.warning("%s %s: %s", request.method, request.path, err.message)
        return await failure(request, err)
    except GatewayError as err:
        return await failure(request, err)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return await failure(
            request, InternalError("the request failed; the gateway log has the details")
        )


async def failure(
    request: web.Request, err: GatewayError, headers: dict[str, str] | None = None
) -> web.Response:
    """``err`` as the API's JSON error, or as an error page where a browser asked for a page."""
    pages = request.app[PAGES]
    if pages.owns(request.path):
        try:
            page = pages.error(
                request,
                await viewer_for_error(request, err),
                err.status,
                HTTPStatus(err.status).phrase,
                err.message,
            )
        except Exception:
            log.exception("could not render the error page for %s", request.path)
        else:
            page.headers.update(headers or {})
            return page
    return error_json(err, headers)


async def viewer_for_error(request: web.Request, err: GatewayError) -> Viewer | None:
    """Who sees an error page; nobody shown when the store cannot tell."""
    if isinstance(err, StoreUnavailable) and VIEWER not in request:
        # a session check would only wait on the same outage again
        return None
    try:
        return await viewer_of(request)
    except StoreUnavailable:
        return None


@web.middleware
async def bearer_auth(request: web.Request, handler):
    if request.path.startswith("/governance/"):
        # a path described for a side role (feedback) takes that role instead of reviewer
        op = operation_of(request.match_info.handler)
        role = op.auth if op is not None and op.auth in SIDE_ROLES else "reviewer"
        request[PRINCIPAL] = request.app[TOKENS].require(request, role)
    return await handler(request)


@routes.get("/healthz")
@describe(summary="Liveness", tags=("health",), auth=None, responses={200: Health})
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


# how long /readyz waits for the store to answer
STORE_CHECK_SECONDS = 1.0


@routes.get("/readyz")
@describe(
    summary="Readiness: policies, store, upstream client and models",
    tags=("health",),
    auth=None,
    responses={200: Readiness, 503: Readiness},
)
async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    checks: dict[str, str] = {}
    checks["policies"] = "ok" if gw.policies.current is not None else "not loaded"
    checks["upstream_client"] = (
        "ok" if gw.session is not None and not gw.session.closed else "closed"
    )
    checks["models"] = "ok" if gw.warming == 0 else "loading"
    ready = all(v == "ok" for v in checks.values())
    try:
        # bounded: a probe gives up after a few seconds, and a server that stopped
        # answering must read as down, not take the probe's whole time
        await asyncio.wait_for(gw.store.fetchone("SELECT 1 AS ok"), STORE_CHECK_SECONDS)
        checks["store"] = "ok"
    except Exception as exc:
        # the class only: a driver's message can carry the host and user
        checks["store"] = f"down: {type(exc).__name__}"
        # a SQLite file is this process's own trouble. PostgreSQL is every
        # replica's: leaving rotation would turn it into a total outage, while
        # the proxy still serves (records wait, holds follow review.on_store_down)
        if gw.store.dialect != "postgresql":
            ready = False
    # named whatever their state, but they take the process out of rotation only where
    # it cannot serve without them: change notices fall back to periodic reconciliation,
    # and a down Redis in ``open`` mode to limits counted per process
    redis = await gw.limiter.redis_status()
    if redis is not None:
        checks["redis"] = redis
        if gw.limiter.needs_redis and redis != "ok":
            ready = False
    listening = getattr(gw.broadcast, "listening", None)
    if listening is not None:
        checks["change_notices"] = "ok" if listening else "reconnecting"
    if gw.leadership is not None:
        checks["leader"] = "yes" if gw.leadership.leader else "no"
    missing = sorted(k for k, v in checks.items() if v not in ("ok", "yes", "no"))
    return json_response(
        {"ready": ready, "checks": checks, "missing": missing}, 200 if ready else 503
    )


@routes.get("/metrics")
@describe(
    summary="Prometheus metrics",
    tags=("health",),
    auth=None,
    responses={200: Text("text/plain")},
)
async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[GATEWAY].metrics.exposition)
    return web.Response(body=data, headers={"content-type": CONTENT_TYPE_LATEST})


@routes.post("/governance/v1/check")
@describe(
    summary="Decide on a text or an upstream answer as the proxy would",
    tags=("policies",),
    request=CheckRequest,
    responses={200: CheckResult, 400: ErrorBody, 404: ErrorBody},
)
async def check(request: web.Request) -> web.Response:
    """Decide on ``{"text"|"response", "route", "sources", "query"}`` as the proxy would."""
    gw = request.app[GATEWAY]
    body = await json_body(request)
    if ("text" in body) == ("response" in body):
        raise BadRequest('send a JSON object with exactly one of "text" or "response"')
    payload = body.get("text", body.get("response"))
    if not isinstance(payload, (str, dict)):
        raise BadRequest('"text" must be a string and "response" a JSON object')
    route = body.get("route") or gw.settings.routes[0].name
    if route not in {r.name for r in gw.settings.routes}:
        raise NotFound(f"no route named {route!r}")
    segments, found, protocol = parse_answer(payload, gw.adapters, route)
    ctx = context_for(route, query=body.get("query"), sources=body.get("sources"))
    ctx.sources.extend(found.items)
    ctx.source_errors.extend(found.errors)
    policy_set = gw.policies.serving
    guard = await evaluate(
        policy_set.for_route(route), segments, ctx, thread_runner=gw.run_blocking
    )
    out = decision_json(guard, policy_set.revision)
    out["route"] = route
    if protocol:
        out["protocol"] = protocol
    return json_response(out)


@routes.get("/governance/v1/policies")
@describe(summary="The policies in force", tags=("policies",), responses={200: PolicyList})
async def policies(request: web.Request) -> web.Response:
    holder = request.app[GATEWAY].policies
    current = holder.current
    return json_response(
        {
            "revision": current.revision if current else None,
            "files": sorted(current.files) if current else [],
            "policies": [
                {
                    "id": p.config.id,
                    "kind": p.config.kind,
                    "mode": p.config.mode,
                    "action": p.config.action.value,
                    "severity": p.config.severity.value,
                    "routes": p.config.routes,
                    "file": p.file,
                }
                for p in (current.policies if current else [])
            ],
            "last_reload": holder.last_reload,
            "last_reload_errors": holder.last_error,
        }
    )


@routes.post("/governance/v1/policies/reload")
@describe(
    summary="Reload the policy files",
    tags=("policies",),
    auth="admin",
    responses={200: Reloaded, 422: ReloadFailed},
)
async def reload_policies(request: web.Request) -> web.Response:
    request.app[TOKENS].require(request, "admin")
    holder = request.app[GATEWAY].policies
    # reload() never raises: a failure is in last_error, and the old set still serves
    ok = await holder.reload()
    revision = holder.current.revision if holder.current else None
    body = {"reloaded": ok, "revision": revision, "errors": None if ok else holder.last_error}
    if ok:
        return json_response(body)
    # the error object every failed call carries, beside the lines a person reads
    failed = ConfigError(
        f"the policies did not reload ({len(holder.last_error or [])} error(s)); "
        f"revision {revision} keeps serving"
    )
    return json_response({**body, **openai_error(failed)}, 422)


@routes.get("/governance/v1/decisions/{decision_id}")
@describe(
    summary="One decision record",
    tags=("decisions",),
    responses={200: DecisionBody, 404: ErrorBody},
)
async def decision(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    decision_id = request.match_info["decision_id"]
    record = await gw.store.get_decision(decision_id)
    if record is None:
        # it may still be waiting in the write queue
        await gw.decisions.flush()
        record = await gw.store.get_decision(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}")
    return json_response(record)


@routes.get("/governance/v1/decisions")
@describe(
    summary="Recent decision records, newest first",
    tags=("decisions",),
    query={
        "route": "only this route",
        "action": "only this action",
        "limit": "at most this many (1000)",
    },
    responses={200: DecisionList, 400: ErrorBody},
)
async def decisions(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    await gw.decisions.flush()
    rows = await gw.store.list_decisions(
        route=request.query.get("route"), action=request.query.get("action"), limit=limit
    )
    return json_response({"decisions": rows})


def create_admin_app(gw: Gateway, tokens: TokenBook | None = None) -> web.Application:
    app = web.Application(middlewares=[bearer_auth])
    app[GATEWAY] = gw
    app[TOKENS] = tokens or TokenBook(gw.settings)
    app[SESSIONS] = SessionBook(gw.store, app[TOKENS], gw.settings.review.session_ttl)
    install_pages(app, Pages(secure_cookie=gw.settings.review.secure_cookie))
    app.add_routes(routes)
    for sub in gw.subsystems:
        sub.admin_routes(app)
    install_openapi(app)
    # outermost, so the middlewares subsystems put in front are covered too
    app.middlewares.insert(0, errors)

    async def lifecycle(app: web.Application):
        await gw.acquire()
        # the login form's key, from the store, so every process signs and checks it alike
        await app[SESSIONS].load_login_key()
        yield
        await gw.release()

    app.cleanup_ctx.append(lifecycle)
    return app
