"""The admin listener: health, metrics, the core governance API, and the UIs' shell.

Everything under ``/governance/`` needs a bearer token; health and metrics
are open, as scrapers and orchestrators expect. Subsystems add their own API
paths and pages through their ``admin_routes`` hook.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.policy.check import context_for, decision_json, evaluate
from gateway.proxy.adapters import parse_answer
from gateway.proxy.state import GATEWAY, Gateway
from gateway.web.api import error_json, json_body, json_response
from gateway.web.auth import PRINCIPAL, TOKENS, TokenBook
from gateway.web.pages import Pages, install_pages
from gateway.web.sessions import SESSIONS, SessionBook

routes = web.RouteTableDef()


@web.middleware
async def errors_and_auth(request: web.Request, handler):
    try:
        if request.path.startswith("/governance/"):
            request[PRINCIPAL] = request.app[TOKENS].require(request, "reviewer")
        return await handler(request)
    except GatewayError as err:
        return error_json(err)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    checks: dict[str, str] = {}
    checks["policies"] = "ok" if gw.policies.current is not None else "not loaded"
    try:
        await gw.store.fetchone("SELECT 1 AS ok")
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"error: {exc}"
    checks["upstream_client"] = (
        "ok" if gw.session is not None and not gw.session.closed else "closed"
    )
    checks["models"] = "ok" if gw.warming == 0 else "loading"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[GATEWAY].metrics.registry)
    return web.Response(body=data, headers={"content-type": CONTENT_TYPE_LATEST})


@routes.post("/governance/v1/check")
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
async def reload_policies(request: web.Request) -> web.Response:
    request.app[TOKENS].require(request, "admin")
    holder = request.app[GATEWAY].policies
    ok = await holder.reload()
    status = 200 if ok else 422
    return json_response(
        {"reloaded": ok, "revision": holder.serving.revision, "errors": holder.last_error}, status
    )


@routes.get("/governance/v1/decisions/{decision_id}")
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
    app = web.Application(middlewares=[errors_and_auth])
    app[GATEWAY] = gw
    app[TOKENS] = tokens or TokenBook(gw.settings)
    app[SESSIONS] = SessionBook(gw.settings.review.session_ttl)
    install_pages(app, Pages(secure_cookie=gw.settings.review.secure_cookie))
    app.add_routes(routes)
    for sub in gw.subsystems:
        sub.admin_routes(app)

    async def lifecycle(app: web.Application):
        await gw.acquire()
        yield
        await gw.release()

    app.cleanup_ctx.append(lifecycle)
    return app
