"""Incident API (``/governance/v1/incidents``…) and the incidents pages (``/incidents/``).

The API sits behind the admin listener's bearer-token middleware. The pages
accept the same bearer token or the review UI's session cookie; forms posted
with a cookie session carry that session's CSRF token.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.admin import json_body, json_response
from gateway.auth import PRINCIPAL, TOKENS, Principal
from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound, Unauthorized
from gateway.incidents import postmortem
from gateway.incidents.containment import MODES
from gateway.incidents.model import BUCKET_SECONDS, STATES
from gateway.incidents.severity import SEVERITIES
from gateway.proxy.state import GATEWAY

API = "/governance/v1/incidents"
ROUTES_API = "/governance/v1/routes"
UI = "/incidents"


def _service(request: web.Request):
    service = request.app[GATEWAY].services.get("incidents")
    if service is None:
        raise NotFound("incidents are not enabled")
    return service


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f'"{name}" must be a string')
    return value


def _require(request: web.Request, role: str) -> Principal:
    return request.app[TOKENS].require(request, role)


async def _detail(service, incident_id: str) -> dict[str, Any]:
    inc = await service.get(incident_id)
    out = inc.as_dict()
    out["timeline"] = [e.as_dict() for e in await service.timeline(incident_id)]
    out["containment"] = [
        s.as_dict() for s in service.switches.values() if s.incident_id == incident_id
    ]
    return out


# -- JSON API ---------------------------------------------------------------------------
async def list_incidents(request: web.Request) -> web.Response:
    service = _service(request)
    q = request.query
    try:
        limit = min(int(q.get("limit", "100")), 1000)
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if q.get("state") and q["state"] not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    active = {"true": True, "false": False}.get(q.get("active", "").lower())
    await service.settle()
    rows = await service.list(
        state=q.get("state"),
        severity=q.get("severity"),
        route=q.get("route"),
        policy=q.get("policy"),
        source=q.get("source"),
        active=active,
        limit=limit,
    )
    return json_response({"incidents": rows, "rule_errors": service.rule_errors})


async def show_incident(request: web.Request) -> web.Response:
    service = _service(request)
    await service.settle()
    return json_response(await _detail(service, request.match_info["id"]))


async def act(request: web.Request) -> web.Response:
    service = _service(request)
    action = request.match_info["action"]
    role = "lead" if action in ("contained", "resolved", "postmortem-done") else "reviewer"
    principal = _require(request, role)
    body = await json_body(request)
    incident_id = request.match_info["id"]
    await service.settle()
    await _apply(service, incident_id, action, principal.name, body)
    return json_response(await _detail(service, incident_id))


async def _apply(service, incident_id: str, action: str, actor: str, body: dict[str, Any]) -> None:
    if action == "acknowledge":
        await service.acknowledge(incident_id, actor, _text(body, "note"))
    elif action == "notes":
        await service.note(incident_id, actor, _text(body, "text"))
    elif action == "contained":
        await service.mark_contained(incident_id, actor, _text(body, "note"))
    elif action == "resolved":
        await service.resolve(incident_id, actor, _text(body, "note"))
    elif action == "review-items":
        await service.link_review(incident_id, _text(body, "review_item"), actor)
    elif action == "postmortem-done":
        await service.postmortem_done(incident_id, actor)
    else:
        raise NotFound(f"no incident action {action!r}")


async def postmortem_md(request: web.Request) -> web.Response:
    service = _service(request)
    await service.settle()
    return _markdown(
        service,
        await service.get(request.match_info["id"]),
        await service.timeline(request.match_info["id"]),
    )


def _markdown(service, inc, events) -> web.Response:
    base = service.cfg.public_url.rstrip("/") if service.cfg.public_url else ""
    text = postmortem.render(inc, events, decision_url=f"{base}/governance/v1/decisions")
    return web.Response(
        text=text,
        content_type="text/markdown",
        charset="utf-8",
        headers={"content-disposition": f'attachment; filename="postmortem-{inc.id}.md"'},
    )


async def list_containment(request: web.Request) -> web.Response:
    service = _service(request)
    return json_response({"containment": [s.as_dict() for s in service.switches.values()]})


async def contain(request: web.Request) -> web.Response:
    service = _service(request)
    principal = _require(request, "lead")
    body = await json_body(request)
    mode = _text(body, "mode")
    incident_id = body.get("incident_id")
    if incident_id is not None and not isinstance(incident_id, str):
        raise BadRequest('"incident_id" must be a string')
    switch = await service.contain_route(
        request.match_info["route"],
        mode,
        principal.name,
        incident_id=incident_id,
        reason=_text(body, "reason"),
    )
    return json_response({"containment": switch.as_dict()})


async def restore(request: web.Request) -> web.Response:
    service = _service(request)
    principal = _require(request, "lead")
    body = await json_body(request)
    switch = await service.restore_route(
        request.match_info["route"], principal.name, _text(body, "reason")
    )
    return json_response({"restored": switch.as_dict()})


# -- pages ---------------------------------------------------------------------------------
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"

LOGIN_COOKIE = "gw_incidents_login"
OWN_COOKIE = "gw_incidents_session"


def _sessions(request: web.Request):
    """The review UI's session book and its cookie's name, or a book of our own.

    Our login always sets our own cookie (scoped to ``/incidents``); a review UI
    session cookie is accepted too whenever the browser sends it here.
    """
    gw = request.app[GATEWAY]
    review = gw.services.get("review")
    book = getattr(review, "sessions", None) if review is not None else None
    try:
        from gateway.review.sessions import COOKIE, SessionBook
    except ImportError:  # no session support at all: bearer tokens only
        return None, None
    if book is not None and hasattr(book, "get"):
        return book, COOKIE
    own = request.app.get(_OWN_BOOK)
    if own is None:
        own = SessionBook(8 * 3600)
        request.app[_OWN_BOOK] = own
    return own, None


_OWN_BOOK = web.AppKey("incident_sessions", object)


def _ui_principal(request: web.Request) -> tuple[Principal | None, str | None]:
    principal = request.app[TOKENS].from_request(request)
    if principal is not None:
        return principal, None
    book, review_cookie = _sessions(request)
    if book is None:
        return None, None
    for name in (OWN_COOKIE, review_cookie):
        session = book.get(request.cookies.get(name)) if name else None
        if session is not None:
            return session.principal, session.csrf
    return None, None


def _page(template: str, nonce: str | None = None, status: int = 200, **ctx) -> web.Response:
    nonce = nonce or secrets.token_urlsafe(16)
    html = _ENV.get_template(template).render(nonce=nonce, **ctx)
    resp = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    resp.headers["content-security-policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    resp.headers["x-content-type-options"] = "nosniff"
    resp.headers["referrer-policy"] = "no-referrer"
    resp.headers["cache-control"] = "no-store"
    resp.headers["x-frame-options"] = "DENY"
    return resp


def _login_redirect(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(f"{UI}/login?next={request.path}")


def _chart(buckets: dict[str, int], width: int = 640, height: int = 140) -> dict[str, Any]:
    if not buckets:
        return {"bars": [], "width": width, "height": height, "max": 0, "start": None, "end": None}
    times = sorted(int(float(k)) for k in buckets)
    start, end = times[0], times[-1]
    slots = (end - start) // BUCKET_SECONDS + 1
    # at most 120 bars: wide incidents fold neighbouring minutes together
    per = max(1, -(-slots // 120))
    folded: dict[int, int] = {}
    for k, n in buckets.items():
        slot = (int(float(k)) - start) // BUCKET_SECONDS // per
        folded[slot] = folded.get(slot, 0) + n
    count = (slots + per - 1) // per
    top = max(folded.values())
    plot_h = height - 20
    bar_w = max(1.0, (width - 40) / count)
    bars = []
    for slot in range(count):
        n = folded.get(slot, 0)
        h = round(plot_h * n / top, 1) if top else 0
        bars.append(
            {
                "x": round(40 + slot * bar_w, 1),
                "y": round(plot_h - h + 2, 1),
                "w": round(max(bar_w - 1, 0.5), 1),
                "h": h,
                "n": n,
                "t": start + slot * per * BUCKET_SECONDS,
            }
        )
    return {
        "bars": bars,
        "width": width,
        "height": height,
        "max": top,
        "start": start,
        "end": end + BUCKET_SECONDS,
        "minutes": per,
    }


async def ui_list(request: web.Request) -> web.Response:
    principal, csrf = _ui_principal(request)
    if principal is None:
        return _login_redirect(request)
    service = _service(request)
    await service.settle()
    q = request.query
    state = q.get("state") if q.get("state") in STATES else None
    severity = q.get("severity") if q.get("severity") in SEVERITIES else None
    rows = await service.list(
        state=state, severity=severity, route=q.get("route") or None, limit=200
    )
    return _page(
        "incidents.html",
        incidents=rows,
        states=STATES,
        severities=SEVERITIES,
        state=state or "",
        severity=severity or "",
        route=q.get("route") or "",
        switches=list(service.switches.values()),
        principal=principal,
        rule_errors=service.rule_errors,
        csrf=csrf or "",
        modes=MODES,
        routes=[r.name for r in request.app[GATEWAY].settings.routes],
    )


async def ui_detail(request: web.Request) -> web.Response:
    principal, csrf = _ui_principal(request)
    if principal is None:
        return _login_redirect(request)
    service = _service(request)
    await service.settle()
    data = await _detail(service, request.match_info["id"])
    return _page(
        "incident.html",
        inc=data,
        chart=_chart(data["buckets"]),
        principal=principal,
        csrf=csrf or "",
        message=request.query.get("msg", ""),
    )


async def _posted_form(request: web.Request):
    """The logged-in principal and the posted form, its CSRF token checked."""
    principal, csrf = _ui_principal(request)
    if principal is None:
        raise Unauthorized("log in first")
    form = await request.post()
    if csrf is not None and not _same(form.get("csrf"), csrf):
        raise Forbidden("the form's CSRF token does not match the session")
    return principal, form


async def ui_action(request: web.Request) -> web.Response:
    principal, form = await _posted_form(request)
    service = _service(request)
    incident_id = request.match_info["id"]
    action = str(form.get("action", ""))
    request[PRINCIPAL] = principal
    role = (
        "lead" if action in ("contained", "resolved", "postmortem-done", "restore") else "reviewer"
    )
    _require(request, role)
    await service.settle()
    message = "done"
    try:
        if action == "restore":
            await service.restore_route(
                str(form.get("route", "")), principal.name, str(form.get("note", ""))
            )
        else:
            body = {
                "note": str(form.get("note", "")),
                "text": str(form.get("text", "")),
                "review_item": str(form.get("review_item", "")),
            }
            await _apply(service, incident_id, action, principal.name, body)
    except GatewayError as err:
        message = err.message
    raise web.HTTPSeeOther(f"{UI}/{incident_id}?msg={_q(message)}")


async def ui_contain(request: web.Request) -> web.Response:
    principal, form = await _posted_form(request)
    request[PRINCIPAL] = principal
    _require(request, "lead")
    service = _service(request)
    route, mode = str(form.get("route", "")), str(form.get("mode", ""))
    if mode == "restore":
        await service.restore_route(route, principal.name, str(form.get("reason", "")))
    else:
        await service.contain_route(route, mode, principal.name, reason=str(form.get("reason", "")))
    raise web.HTTPSeeOther(f"{UI}/")


async def ui_postmortem(request: web.Request) -> web.Response:
    principal, _ = _ui_principal(request)
    if principal is None:
        return _login_redirect(request)
    service = _service(request)
    await service.settle()
    incident_id = request.match_info["id"]
    return _markdown(service, await service.get(incident_id), await service.timeline(incident_id))


async def ui_login_form(request: web.Request) -> web.Response:
    book, _ = _sessions(request)
    if book is None:
        raise NotFound("log in with a bearer token; this gateway has no UI sessions")
    nonce = secrets.token_urlsafe(16)
    resp = _page(
        "login.html", csrf=book.login_csrf(nonce), next=_next(request.query.get("next")), error=""
    )
    resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path=UI)
    return resp


async def ui_login(request: web.Request) -> web.Response:
    book, _ = _sessions(request)
    if book is None:
        raise NotFound("log in with a bearer token; this gateway has no UI sessions")
    form = await request.post()
    if not book.check_login_csrf(request.cookies.get(LOGIN_COOKIE), str(form.get("csrf", ""))):
        raise Forbidden("the login form expired; load it again")
    principal = request.app[TOKENS].lookup(str(form.get("token", "")).strip())
    if principal is None:
        nonce = secrets.token_urlsafe(16)
        resp = _page(
            "login.html",
            csrf=book.login_csrf(nonce),
            next=_next(form.get("next")),
            error="That token is not valid.",
            status=401,
        )
        resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path=UI)
        return resp
    session = book.create(principal)
    resp = web.HTTPSeeOther(_next(form.get("next")))
    resp.set_cookie(
        OWN_COOKIE, session.id, httponly=True, samesite="Strict", path=UI, secure=request.secure
    )
    resp.del_cookie(LOGIN_COOKIE, path=UI)
    raise resp


def _next(value: Any) -> str:
    # only our own pages, never an open redirect
    text = str(value or "")
    return text if text.startswith(UI + "/") and "//" not in text and "\\" not in text else UI + "/"


def _same(a: Any, b: str) -> bool:
    return isinstance(a, str) and secrets.compare_digest(a.encode(), b.encode())


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:200], safe="")


def install_routes(app: web.Application) -> None:
    app.router.add_get(API, list_incidents)
    app.router.add_get(f"{API}/{{id}}", show_incident)
    app.router.add_get(f"{API}/{{id}}/postmortem", postmortem_md)
    app.router.add_post(
        f"{API}/{{id}}/{{action:acknowledge|notes|contained|resolved|review-items|"
        "postmortem-done}",
        act,
    )
    app.router.add_get(f"{ROUTES_API}/containment", list_containment)
    app.router.add_post(f"{ROUTES_API}/{{route}}/contain", contain)
    app.router.add_post(f"{ROUTES_API}/{{route}}/restore", restore)
    app.router.add_get(f"{UI}/", ui_list)
    app.router.add_get(f"{UI}/login", ui_login_form)
    app.router.add_post(f"{UI}/login", ui_login)
    app.router.add_post(f"{UI}/containment", ui_contain)
    app.router.add_get(f"{UI}/{{id}}", ui_detail)
    app.router.add_post(f"{UI}/{{id}}", ui_action)
    app.router.add_get(f"{UI}/{{id}}/postmortem.md", ui_postmortem)
