"""The reviewer pages at ``/review/`` on the admin listener (the shared web layer).

Keyboard shortcuts come from the layout's one script; every action is also
a plain form that carries the session's CSRF token.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from gateway.errors import BadRequest, GatewayError
from gateway.review import render
from gateway.review.allowlist import SUPPORTED, add_to_allowlist, what_it_adds
from gateway.review.api import parse_filters
from gateway.review.service import REVIEW
from gateway.web.pages import PAGES, field, need_viewer, posted_form, redirect

UI = "/review"
PAGE_SIZE = 100


async def queue(request: web.Request) -> web.Response:
    viewer = await need_viewer(request)
    svc = request.app[REVIEW]
    error: str | None = None
    try:
        filters = parse_filters(request.query, viewer.principal.name)
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
    current = svc.policies.current
    policies = sorted({p.config.id for p in (current.policies if current else [])} | set(rates))
    query = {k: v for k, v in request.query.items() if k != "offset"}
    return request.app[PAGES].render(
        request,
        "review/queue.html",
        viewer=viewer,
        title="Review queue",
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
        routes=[r.name for r in svc.settings.routes],
        can_bulk=viewer.principal.has("lead"),
        next_url="?" + urlencode(dict(query, offset=offset + PAGE_SIZE)),
        prev_url="?" + urlencode(dict(query, offset=max(offset - PAGE_SIZE, 0))),
        message=request.query.get("msg"),
    )


async def bulk(request: web.Request) -> web.StreamResponse:
    viewer, form = await posted_form(request, "lead")
    entries = []
    for value in form.getall("sel", []):
        item_id, _, version = str(value).partition(":")
        entries.append({"id": item_id, "version": version})
    try:
        results = await request.app[REVIEW].actions.bulk(
            viewer.principal, field(form, "action"), entries, field(form, "reason")
        )
    except GatewayError as err:
        msg = err.message
    else:
        ok = sum(r["ok"] for r in results)
        failed = [f"{r['id'][:8]}: {r['message']}" for r in results if not r["ok"]]
        msg = f"{ok} of {len(results)} done" + (f"; {'; '.join(failed)}" if failed else "")
    raise redirect(f"{UI}/?" + urlencode({"msg": msg}))


async def item_page(
    request: web.Request, *, error: str | None = None, status: int = 200
) -> web.Response:
    viewer = await need_viewer(request)
    svc = request.app[REVIEW]
    pages = request.app[PAGES]
    item = await svc.db.get(request.match_info["id"])
    if item is None:
        return pages.error(
            request,
            viewer,
            404,
            "Not found",
            "No such review item (it may have passed its retention).",
        )
    findings = render.findings_of(item)
    segments = []
    texts = item.segments or {}
    for key in item.record.segment_keys or sorted(texts):
        text = texts.get(key)
        mine = [f for f in findings if f.segment == key]
        segments.append(
            {
                "key": key,
                "html": render.highlight(text, mine) if text is not None else None,
                "text": text,
                "edited": (item.edited or {}).get(key),
            }
        )
    return pages.render(
        request,
        "review/item.html",
        viewer=viewer,
        title=f"Review {item.id[:8]}",
        status=status,
        item=item,
        findings=findings,
        segments=segments,
        audit=await svc.db.audit(item.id),
        comments=await svc.db.comments(item.id),
        now=time.time(),
        error=error,
        message=request.query.get("msg"),
        supported=SUPPORTED,
        what_it_adds=what_it_adds,
        can_lead=viewer.principal.has("lead"),
    )


async def item_action(request: web.Request) -> web.StreamResponse:
    viewer, form = await posted_form(request)
    svc = request.app[REVIEW]
    actions = svc.actions
    item_id = request.match_info["id"]
    principal = viewer.principal
    do = field(form, "do")
    version = field(form, "version")
    note = field(form, "note")
    try:
        if do == "claim":
            await actions.claim(item_id, principal, version)
            msg = "Claimed."
        elif do == "release":
            await actions.release(item_id, principal, version)
            msg = "Released."
        elif do == "approve":
            await actions.approve(item_id, principal, version, note=note)
            msg = "Approved as is."
        elif do == "edit":
            edited = {
                k[len("text_") :]: str(v).replace("\r\n", "\n")
                for k, v in form.items()
                if k.startswith("text_")
            }
            await actions.approve(item_id, principal, version, edited, note=note)
            msg = "Approved with your edit."
        elif do == "reject":
            await actions.reject(item_id, principal, version, field(form, "reason"))
            msg = "Rejected."
        elif do == "escalate":
            await actions.escalate(item_id, principal, version, note)
            msg = "Escalated."
        elif do == "comment":
            await actions.comment(item_id, principal, field(form, "body"))
            msg = "Comment added."
        elif do == "allowlist":
            if not principal.has("lead"):
                raise request.app[PAGES].refuse(
                    request, viewer, "Changing a policy needs the lead role."
                )
            item = await actions.get(item_id)
            out = await add_to_allowlist(
                svc.db, svc.policies, item, principal, form.get("policy"), form.get("finding")
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
    raise redirect(f"{UI}/items/{item_id}?" + urlencode({"msg": msg}))


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{UI}/")


async def old_login(request: web.Request) -> web.StreamResponse:
    raise redirect("/login?" + urlencode({"next": request.query.get("next", f"{UI}/")}))


def install(app: web.Application) -> None:
    here = Path(__file__).parent
    app[PAGES].add_section("review", "Review queue", f"{UI}/", here / "templates", order=10)
    app.router.add_get(UI, root)
    app.router.add_get(f"{UI}/", queue)
    app.router.add_get(f"{UI}/login", old_login)
    app.router.add_post(f"{UI}/bulk", bulk)
    app.router.add_get(f"{UI}/items/{{id}}", item_page)
    app.router.add_post(f"{UI}/items/{{id}}", item_action)
