"""The incidents pages at ``/incidents/`` on the admin listener (the shared web layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.errors import GatewayError
from gateway.incidents.api import INCIDENTS, LEAD_ACTIONS, apply_action, markdown
from gateway.incidents.model import BUCKET_SECONDS, STATES
from gateway.records.containment import MODES
from gateway.severity import SEVERITIES
from gateway.web.pages import PAGES, field, need_viewer, posted_form, redirect

UI = "/incidents"


# the chart spans at least this many buckets, so a burst within one minute is
# a bar on a time axis rather than one bar across the whole chart
MIN_SLOTS = 30
# and a bar is never wider than this (pixels)
MAX_BAR = 16.0


def chart(buckets: dict[str, int], width: int = 640, height: int = 140) -> dict[str, Any]:
    """Bars of breaches per minute (folded to at most 120 bars) for the incident page."""
    if not buckets:
        return {"bars": [], "width": width, "height": height, "max": 0, "start": None, "end": None}
    times = sorted(int(float(k)) for k in buckets)
    start, end = times[0], times[-1]
    slots = (end - start) // BUCKET_SECONDS + 1
    if slots < MIN_SLOTS:
        # the minutes before the first breach, on the left: the burst ends the axis
        start -= (MIN_SLOTS - slots) * BUCKET_SECONDS
        slots = MIN_SLOTS
    per = max(1, -(-slots // 120))
    folded: dict[int, int] = {}
    for k, n in buckets.items():
        slot = (int(float(k)) - start) // BUCKET_SECONDS // per
        folded[slot] = folded.get(slot, 0) + n
    count = (slots + per - 1) // per
    top = max(folded.values())
    plot_h = height - 20
    bar_w = min(MAX_BAR, max(1.0, (width - 40) / count))
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


async def incidents_page(request: web.Request) -> web.Response:
    viewer = await need_viewer(request)
    service = request.app[INCIDENTS]
    await service.settle()
    q = request.query
    state = q.get("state") if q.get("state") in STATES else None
    severity = q.get("severity") if q.get("severity") in SEVERITIES else None
    rows = await service.list(
        state=state, severity=severity, route=q.get("route") or None, limit=200
    )
    return request.app[PAGES].render(
        request,
        "incidents/incidents.html",
        viewer=viewer,
        title="Incidents",
        incidents=rows,
        states=STATES,
        severities=SEVERITIES,
        state=state or "",
        severity=severity or "",
        route=q.get("route") or "",
        switches=list(service.table.switches.values()),
        rule_errors=service.rule_errors,
        modes=MODES,
        routes=[r.name for r in service.settings.routes],
    )


async def incident_page(request: web.Request) -> web.Response:
    viewer = await need_viewer(request)
    service = request.app[INCIDENTS]
    await service.settle()
    data = await service.detail(request.match_info["id"])
    return request.app[PAGES].render(
        request,
        "incidents/incident.html",
        viewer=viewer,
        title=data["title"],
        inc=data,
        chart=chart(data["buckets"]),
        message=request.query.get("msg", ""),
    )


async def incident_action(request: web.Request) -> web.StreamResponse:
    viewer, form = await posted_form(request)
    service = request.app[INCIDENTS]
    incident_id = request.match_info["id"]
    action = field(form, "action")
    if action in LEAD_ACTIONS and not viewer.principal.has("lead"):
        raise request.app[PAGES].refuse(request, viewer, f"{action} needs the lead role.")
    await service.settle()
    message = "done"
    try:
        if action == "restore":
            await service.restore_route(
                field(form, "route"), viewer.principal.name, field(form, "note")
            )
        else:
            body = {name: field(form, name) for name in ("note", "text", "review_item")}
            await apply_action(service, incident_id, action, viewer.principal.name, body)
    except GatewayError as err:
        message = err.message
    raise redirect(f"{UI}/{incident_id}?" + urlencode({"msg": message[:200]}))


async def containment_action(request: web.Request) -> web.StreamResponse:
    viewer, form = await posted_form(request, "lead")
    service = request.app[INCIDENTS]
    route, mode, reason = field(form, "route"), field(form, "mode"), field(form, "reason")
    try:
        if mode == "restore":
            await service.restore_route(route, viewer.principal.name, reason)
        else:
            await service.contain_route(route, mode, viewer.principal.name, reason=reason)
    except GatewayError as err:
        return request.app[PAGES].error(request, viewer, err.status, "Not applied", err.message)
    raise redirect(f"{UI}/")


async def postmortem_download(request: web.Request) -> web.Response:
    await need_viewer(request)
    service = request.app[INCIDENTS]
    await service.settle()
    incident_id = request.match_info["id"]
    return markdown(service, await service.get(incident_id), await service.timeline(incident_id))


async def old_login(request: web.Request) -> web.StreamResponse:
    raise redirect("/login?" + urlencode({"next": request.query.get("next", f"{UI}/")}))


def install(app: web.Application) -> None:
    here = Path(__file__).parent
    app[PAGES].add_section("incidents", "Incidents", f"{UI}/", here / "templates", order=20)
    app.router.add_get(f"{UI}/", incidents_page)
    app.router.add_get(f"{UI}/login", old_login)
    app.router.add_post(f"{UI}/containment", containment_action)
    app.router.add_get(f"{UI}/{{id}}", incident_page)
    app.router.add_post(f"{UI}/{{id}}", incident_action)
    app.router.add_get(f"{UI}/{{id}}/postmortem.md", postmortem_download)
