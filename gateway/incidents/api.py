"""The incident API: ``/governance/v1/incidents`` and route containment.

Behind the admin listener's bearer-token middleware; acting on an incident
needs the reviewer role, and containing, resolving or closing needs lead.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, NotFound
from gateway.incidents import postmortem
from gateway.incidents.api_models import (
    Contained,
    ContainmentList,
    ContainRequest,
    IncidentActionRequest,
    IncidentDetail,
    IncidentList,
    Restored,
    RestoreRequest,
)
from gateway.incidents.model import STATES, Incident, TimelineEvent
from gateway.incidents.service import IncidentService
from gateway.web.api import json_body, json_response, text_field
from gateway.web.auth import TOKENS
from gateway.web.openapi import ErrorBody, Text, describe

API = "/governance/v1/incidents"
ROUTES_API = "/governance/v1/routes"
# actions on an incident that need the lead role
LEAD_ACTIONS = frozenset({"contained", "resolved", "postmortem-done", "restore"})

INCIDENTS = web.AppKey("incidents", IncidentService)


@describe(
    summary="Incidents, newest first",
    tags=("incidents",),
    query={
        "state": "",
        "severity": "",
        "route": "",
        "policy": "",
        "source": "",
        "active": "true or false",
        "limit": "",
    },
    responses={200: IncidentList, 400: ErrorBody},
)
async def list_incidents(request: web.Request) -> web.Response:
    service = request.app[INCIDENTS]
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


@describe(
    summary="One incident with its timeline and containment",
    tags=("incidents",),
    responses={200: IncidentDetail, 404: ErrorBody},
)
async def show_incident(request: web.Request) -> web.Response:
    service = request.app[INCIDENTS]
    await service.settle()
    return json_response(await service.detail(request.match_info["id"]))


@describe(
    summary="Act on an incident",
    tags=("incidents",),
    description="contained, resolved and postmortem-done need the lead role.",
    request=IncidentActionRequest,
    responses={200: IncidentDetail, 400: ErrorBody, 404: ErrorBody, 409: ErrorBody},
)
async def act(request: web.Request) -> web.Response:
    service = request.app[INCIDENTS]
    action = request.match_info["action"]
    principal = request.app[TOKENS].require(
        request, "lead" if action in LEAD_ACTIONS else "reviewer"
    )
    body = await json_body(request)
    incident_id = request.match_info["id"]
    await service.settle()
    await apply_action(service, incident_id, action, principal.name, body)
    return json_response(await service.detail(incident_id))


async def apply_action(
    service: IncidentService, incident_id: str, action: str, actor: str, body: dict[str, Any]
) -> None:
    """One person's action on an incident; the API and the pages share it."""
    if action == "acknowledge":
        await service.acknowledge(incident_id, actor, text_field(body, "note"))
    elif action == "notes":
        await service.note(incident_id, actor, text_field(body, "text"))
    elif action == "contained":
        await service.mark_contained(incident_id, actor, text_field(body, "note"))
    elif action == "resolved":
        await service.resolve(incident_id, actor, text_field(body, "note"))
    elif action == "review-items":
        await service.link_review(incident_id, text_field(body, "review_item"), actor)
    elif action == "postmortem-done":
        await service.postmortem_done(incident_id, actor)
    else:
        raise NotFound(f"no incident action {action!r}")


def markdown(service: IncidentService, inc: Incident, events: list[TimelineEvent]) -> web.Response:
    base = service.cfg.public_url.rstrip("/") if service.cfg.public_url else ""
    text = postmortem.render(inc, events, decision_url=f"{base}/governance/v1/decisions")
    return web.Response(
        text=text,
        content_type="text/markdown",
        charset="utf-8",
        headers={"content-disposition": f'attachment; filename="postmortem-{inc.id}.md"'},
    )


@describe(
    summary="The incident's postmortem draft as Markdown",
    tags=("incidents",),
    responses={200: Text("text/markdown"), 404: ErrorBody},
)
async def postmortem_md(request: web.Request) -> web.Response:
    service = request.app[INCIDENTS]
    await service.settle()
    incident_id = request.match_info["id"]
    return markdown(service, await service.get(incident_id), await service.timeline(incident_id))


@describe(
    summary="Containment switches in force", tags=("containment",), responses={200: ContainmentList}
)
async def list_containment(request: web.Request) -> web.Response:
    table = request.app[INCIDENTS].table
    return json_response({"containment": [s.to_json() for s in table.switches.values()]})


@describe(
    summary="Contain a route",
    tags=("containment",),
    auth="lead",
    request=ContainRequest,
    responses={200: Contained, 400: ErrorBody, 404: ErrorBody},
)
async def contain(request: web.Request) -> web.Response:
    service = request.app[INCIDENTS]
    principal = request.app[TOKENS].require(request, "lead")
    body = await json_body(request)
    incident_id = body.get("incident_id")
    if incident_id is not None and not isinstance(incident_id, str):
        raise BadRequest('"incident_id" must be a string')
    switch = await service.contain_route(
        request.match_info["route"],
        text_field(body, "mode"),
        principal.name,
        incident_id=incident_id,
        reason=text_field(body, "reason"),
    )
    return json_response({"containment": switch.to_json()})


@describe(
    summary="Lift a route's containment",
    tags=("containment",),
    auth="lead",
    request=RestoreRequest,
    responses={200: Restored, 404: ErrorBody},
)
async def restore(request: web.Request) -> web.Response:
    service = request.app[INCIDENTS]
    principal = request.app[TOKENS].require(request, "lead")
    body = await json_body(request)
    switch = await service.restore_route(
        request.match_info["route"], principal.name, text_field(body, "reason")
    )
    return json_response({"restored": switch.to_json()})


def install(app: web.Application) -> None:
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
