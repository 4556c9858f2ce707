"""``/governance/v1/routes/{route}/variants``: a split route's weights, figures and actions.

Reading needs any token; promote, roll back and reset need the lead role,
like containing a route.
"""

from __future__ import annotations

from aiohttp import web

from gateway.canary.api_models import (
    VariantActionRequest,
    VariantStatus,
    VariantStatusList,
    WeightsChanged,
)
from gateway.canary.service import CanaryService
from gateway.errors import BadRequest
from gateway.web.api import json_body, json_response, text_field
from gateway.web.auth import TOKENS
from gateway.web.openapi import ErrorBody, describe

ROUTES_API = "/governance/v1/routes"

CANARY = web.AppKey("canary", CanaryService)


@describe(
    summary="Every route that splits its traffic: weights in force and figures",
    tags=("variants",),
    responses={200: VariantStatusList},
)
async def list_variants(request: web.Request) -> web.Response:
    service = request.app[CANARY]
    return json_response(
        {"routes": [await service.status(route) for route in service.routes.values()]}
    )


@describe(
    summary="One route's variants: weights in force, who set them, figures in the window",
    tags=("variants",),
    responses={200: VariantStatus, 404: ErrorBody},
)
async def show_variants(request: web.Request) -> web.Response:
    service = request.app[CANARY]
    return json_response(await service.status(service.route(request.match_info["route"])))


@describe(
    summary="Promote, roll back or reset a route's variants",
    description="promote: one variant takes all the traffic; rollback: variants get none; "
    "reset: the configured weights again. Each restarts the comparison window.",
    tags=("variants",),
    auth="lead",
    request=VariantActionRequest,
    responses={200: WeightsChanged, 400: ErrorBody, 404: ErrorBody},
)
async def act(request: web.Request) -> web.Response:
    service = request.app[CANARY]
    principal = request.app[TOKENS].require(request, "lead")
    body = await json_body(request)
    variant = body.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise BadRequest('"variant" must be a string')
    reason = text_field(body, "reason")
    route, action = request.match_info["route"], request.match_info["action"]
    if action == "promote":
        changed = await service.promote(route, variant, principal.name, reason)
    elif action == "rollback":
        changed = await service.rollback(route, variant, principal.name, reason)
    else:
        if variant is not None:
            raise BadRequest("reset takes no variant: it restores every configured weight")
        changed = await service.reset(route, principal.name, reason)
    return json_response({"weights": changed.to_json()})


def install(app: web.Application) -> None:
    app.router.add_get(f"{ROUTES_API}/variants", list_variants)
    app.router.add_get(f"{ROUTES_API}/{{route}}/variants", show_variants)
    app.router.add_post(f"{ROUTES_API}/{{route}}/{{action:promote|rollback|reset}}", act)
