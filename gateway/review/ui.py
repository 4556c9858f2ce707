"""The reviewer web UI at ``/review/`` on the admin listener.

Server-rendered with Jinja2 (autoescaping on), one small script for
keyboard shortcuts, no inline script or style so the content-security
policy can forbid both. Login takes a reviewer token and keeps a session
in an HttpOnly, SameSite=Strict cookie; every form carries the session's
CSRF token.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from gateway.auth import TOKENS, Principal
from gateway.errors import BadRequest, GatewayError
from gateway.proxy.state import GATEWAY
from gateway.review import render
from gateway.review.allowlist import SUPPORTED, what_it_adds
from gateway.review.api import parse_filters
from gateway.review.service import ReviewService
from gateway.review.sessions import COOKIE, PRE_COOKIE, Session, same

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 100
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on
    # form posts, and the origin check could not tell our own forms from others
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

TEMPLATES = web.AppKey("review_templates", jinja2.Environment)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["relative"] = render.relative
    env.filters["stamp"] = render.stamp
    env.filters["pretty"] = render.pretty
    return env


def svc_of(request: web.Request) -> ReviewService:
    return request.app[GATEWAY].services["review"]


def page(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
    started = time.perf_counter()
    html = request.app[TEMPLATES].get_template(template).render(**ctx)
    headers = dict(SECURITY_HEADERS)
    headers["server-timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.2f}"
    return web.Response(text=html, content_type="text/html", status=status, headers=headers)


def _session(request: web.Request) -> Session | None:
    return svc_of(request).sessions.get(request.cookies.get(COOKIE))


def _login_redirect(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(
        "/review/login?" + urlencode({"next": request.path_qs}), headers=SECURITY_HEADERS
    )


def _need_session(request: web.Request) -> Session:
    session = _session(request)
    if session is None:
        raise _login_redirect(request)
    return session


def _same_origin(request: web.Request) -> bool:
    """Browsers send Origin on POST; one from another site is refused outright."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def _forbidden(request: web.Request, message: str, session: Session | None = None):
    return page(
        request, "error.html", status=403, message=message, session=session, title="Forbidden"
    )


def field(form, name: str) -> str:
    """A form value as text (a file upload where text belongs counts as empty)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _safe_next(value: str | None) -> str:
    # only a local path; anything else could bounce the reviewer off-site
    if value and value.startswith("/review/") and not value.startswith("//"):
        return value
    return "/review/"


# -- login --------------------------------------------------------------------------
async def login_form(request: web.Request) -> web.Response:
    svc = svc_of(request)
    nonce = secrets.token_urlsafe(24)
    resp = page(
        request,
        "login.html",
        session=None,
        csrf=svc.sessions.login_csrf(nonce),
        next=_safe_next(request.query.get("next")),
        error=None,
        title="Log in",
    )
    _set_cookie(request, resp, PRE_COOKIE, nonce, max_age=1800)
    return resp


def _set_cookie(
    request: web.Request,
    resp: web.StreamResponse,
    name: str,
    value: str,
    max_age: float | None = None,
) -> None:
    secure = request.app[GATEWAY].settings.review.secure_cookie
    # the whole admin listener, so the incidents pages share the login; the JSON
    # API ignores cookies (bearer tokens only), so it gains no CSRF exposure
    resp.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
        max_age=int(max_age) if max_age else None,
    )


async def login(request: web.Request) -> web.StreamResponse:
    svc = svc_of(request)
    form = await request.post()
    nonce = request.cookies.get(PRE_COOKIE)
    if not _same_origin(request) or not svc.sessions.check_login_csrf(nonce, field(form, "csrf")):
        return _forbidden(
            request,
            "The login form expired or came from elsewhere; reload the login page and try again.",
        )
    token = str(form.get("token") or "").strip()
    principal = request.app[TOKENS].lookup(token) if token else None
    if principal is None or not principal.has("reviewer"):
        fresh = secrets.token_urlsafe(24)
        resp = page(
            request,
            "login.html",
            status=401,
            session=None,
            csrf=svc.sessions.login_csrf(fresh),
            next=_safe_next(field(form, "next")),
            error="That token is not valid.",
            title="Log in",
        )
        _set_cookie(request, resp, PRE_COOKIE, fresh, max_age=1800)
        return resp
    session = svc.sessions.create(principal)
    resp = web.HTTPSeeOther(_safe_next(str(form.get("next") or "")), headers=SECURITY_HEADERS)
    _set_cookie(request, resp, COOKIE, session.id, max_age=svc.sessions.ttl)
    resp.del_cookie(PRE_COOKIE, path="/")
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    session = _need_session(request)
    form = await request.post()
    if not _same_origin(request) or not same(field(form, "csrf"), session.csrf):
        return _forbidden(request, "Missing or wrong form token.", session)
    svc_of(request).sessions.drop(session.id)
    resp = web.HTTPSeeOther("/review/login", headers=SECURITY_HEADERS)
    resp.del_cookie(COOKIE, path="/")
    return resp


# -- queue ------------------------------------------------------------------------------
async def queue(request: web.Request) -> web.Response:
    session = _need_session(request)
    svc = svc_of(request)
    error: str | None = None
    try:
        filters = parse_filters(request.query, session.principal.name)
    except BadRequest as err:
        filters, error = {"state": "pending"}, err.message
    try:
        offset = max(int(request.query.get("offset", "0")), 0)
    except ValueError:
        offset = 0
    items, total = await svc.db.list_items(
        filters, limit=PAGE_SIZE, offset=offset, sort=request.query.get("sort", "sla")
    )
    counts = await svc.db.counts()
    rates = await svc.db.approval_rates()
    policies = sorted(
        {p.config.id for p in (svc.gw.policies.current.policies if svc.gw.policies.current else [])}
        | set(rates)
    )
    query = {k: v for k, v in request.query.items() if k != "offset"}
    return page(
        request,
        "queue.html",
        session=session,
        items=items,
        total=total,
        counts=counts,
        rates=rates,
        filters=filters,
        query=query,
        offset=offset,
        page_size=PAGE_SIZE,
        now=time.time(),
        error=error,
        policies=policies,
        routes=[r.name for r in svc.gw.settings.routes],
        can_bulk=session.principal.has("lead"),
        title="Review queue",
        next_url="?" + urlencode(dict(query, offset=offset + PAGE_SIZE)),
        prev_url="?" + urlencode(dict(query, offset=max(offset - PAGE_SIZE, 0))),
        message=request.query.get("msg"),
    )


async def bulk(request: web.Request) -> web.StreamResponse:
    session = _need_session(request)
    form = await request.post()
    if not _same_origin(request) or not same(field(form, "csrf"), session.csrf):
        return _forbidden(request, "Missing or wrong form token.", session)
    if not session.principal.has("lead"):
        return _forbidden(request, "Bulk actions need the lead role.", session)
    entries = []
    for value in form.getall("sel", []):
        item_id, _, version = str(value).partition(":")
        entries.append({"id": item_id, "version": version})
    try:
        results = await svc_of(request).bulk(
            session.principal, str(form.get("action") or ""), entries, str(form.get("reason") or "")
        )
    except GatewayError as err:
        msg = err.message
    else:
        ok = sum(r["ok"] for r in results)
        failed = [f"{r['id'][:8]}: {r['message']}" for r in results if not r["ok"]]
        msg = f"{ok} of {len(results)} done" + (f"; {'; '.join(failed)}" if failed else "")
    return web.HTTPSeeOther("/review/?" + urlencode({"msg": msg}), headers=SECURITY_HEADERS)


# -- item -----------------------------------------------------------------------------------
async def item_page(
    request: web.Request, *, error: str | None = None, status: int = 200
) -> web.Response:
    session = _need_session(request)
    svc = svc_of(request)
    item = await svc.db.get(request.match_info["id"])
    if item is None:
        return page(
            request,
            "error.html",
            status=404,
            session=session,
            title="Not found",
            message="No such review item (it may have passed its retention).",
        )
    findings = render.findings_of(item)
    segments = []
    texts = item.get("segments") or {}
    for key in item["record"].get("segment_keys") or sorted(texts):
        text = texts.get(key)
        mine = [f for f in findings if f.segment == key]
        segments.append(
            {
                "key": key,
                "html": render.highlight(text, mine) if text is not None else None,
                "text": text,
                "edited": (item.get("edited") or {}).get(key),
            }
        )
    return page(
        request,
        "item.html",
        status=status,
        session=session,
        item=item,
        findings=findings,
        segments=segments,
        audit=await svc.db.audit(item["id"]),
        comments=await svc.db.comments(item["id"]),
        now=time.time(),
        error=error,
        message=request.query.get("msg"),
        supported=SUPPORTED,
        what_it_adds=what_it_adds,
        can_lead=session.principal.has("lead"),
        title=f"Review {item['id'][:8]}",
        result=svc.result_body(item),
    )


async def item_action(request: web.Request) -> web.StreamResponse:
    session = _need_session(request)
    form = await request.post()
    if not _same_origin(request) or not same(field(form, "csrf"), session.csrf):
        return _forbidden(request, "Missing or wrong form token; reload the page.", session)
    svc = svc_of(request)
    item_id = request.match_info["id"]
    principal: Principal = session.principal
    do = str(form.get("do") or "")
    version = form.get("version")
    msg = ""
    try:
        if do == "claim":
            await svc.claim(item_id, principal, version)
            msg = "Claimed."
        elif do == "release":
            await svc.release(item_id, principal, version)
            msg = "Released."
        elif do == "approve":
            await svc.approve(item_id, principal, version, note=str(form.get("note") or ""))
            msg = "Approved as is."
        elif do == "edit":
            edited = {
                k[len("text_") :]: str(v).replace("\r\n", "\n")
                for k, v in form.items()
                if k.startswith("text_")
            }
            await svc.approve(item_id, principal, version, edited, note=str(form.get("note") or ""))
            msg = "Approved with your edit."
        elif do == "reject":
            await svc.reject(item_id, principal, version, str(form.get("reason") or ""))
            msg = "Rejected."
        elif do == "escalate":
            await svc.escalate(item_id, principal, version, str(form.get("note") or ""))
            msg = "Escalated."
        elif do == "comment":
            await svc.comment(item_id, principal, str(form.get("body") or ""))
            msg = "Comment added."
        elif do == "allowlist":
            if not principal.has("lead"):
                return _forbidden(request, "Changing a policy needs the lead role.", session)
            from gateway.review.allowlist import add_to_allowlist

            item = await svc.get(item_id)
            out = await add_to_allowlist(
                svc, item, principal, form.get("policy"), form.get("finding")
            )
            if not out["applied"]:
                detail = "; ".join(out.get("errors") or [])
                return await item_page(
                    request,
                    error=f"Allowlist not changed: {out['reason']}"
                    + (f" ({detail})" if detail else ""),
                    status=422,
                )
            msg = f"Added {out['entry']} to {out['field']} of {out['policy']}; policies reloaded."
        else:
            raise BadRequest(f"unknown action {do!r}")
    except GatewayError as err:
        return await item_page(request, error=err.message, status=err.status)
    return web.HTTPSeeOther(
        f"/review/items/{item_id}?" + urlencode({"msg": msg}), headers=SECURITY_HEADERS
    )


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = STATIC / name
    if "/" in name or path.suffix not in _STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    headers = dict(SECURITY_HEADERS, **{"cache-control": "max-age=300"})
    return web.Response(
        body=path.read_bytes(), content_type=_STATIC_TYPES[path.suffix], headers=headers
    )


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/review/")


def install_ui(app: web.Application) -> None:
    app[TEMPLATES] = _env()
    app.router.add_get("/review", root)
    app.router.add_get("/review/", queue)
    app.router.add_get("/review/login", login_form)
    app.router.add_post("/review/login", login)
    app.router.add_post("/review/logout", logout)
    app.router.add_post("/review/bulk", bulk)
    app.router.add_get("/review/items/{id}", item_page)
    app.router.add_post("/review/items/{id}", item_action)
    app.router.add_get("/review/static/{name}", static)
