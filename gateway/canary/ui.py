"""The variants page at ``/variants/``: each split route's weights, figures and actions.

Promote, roll back and reset are forms here and on a canary incident's page
(which posts here and is sent back to itself); they need the lead role.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from gateway.canary.api import CANARY
from gateway.errors import GatewayError
from gateway.web.pages import PAGES, field, need_viewer, posted_form, redirect

UI = "/variants"
ACTIONS = ("promote", "rollback", "reset")
# where a form may send the browser back to: our pages, never elsewhere
RETURNS = ("/variants/", "/incidents/")


async def variants_page(request: web.Request) -> web.Response:
    viewer = await need_viewer(request)
    service = request.app[CANARY]
    return request.app[PAGES].render(
        request,
        "canary/variants.html",
        viewer=viewer,
        title="Route variants",
        routes=[await service.status(route) for route in service.routes.values()],
        message=request.query.get("msg", ""),
    )


async def variant_action(request: web.Request) -> web.StreamResponse:
    viewer, form = await posted_form(request, "lead")
    service = request.app[CANARY]
    route, action = request.match_info["route"], field(form, "action")
    back = field(form, "next")
    if not back.startswith(RETURNS) or "//" in back:
        back = f"{UI}/"
    variant = field(form, "variant") or None
    reason = field(form, "reason")
    message = "done"
    try:
        if action == "promote":
            changed = await service.promote(route, variant, viewer.principal.name, reason)
        elif action == "rollback":
            changed = await service.rollback(route, variant, viewer.principal.name, reason)
        elif action == "reset":
            changed = await service.reset(route, viewer.principal.name, reason)
        else:
            raise GatewayError(f"action must be one of {', '.join(ACTIONS)}")
        shown = ", ".join(f"{k} {v:g}" for k, v in changed.weights.items())
        message = f"route {route}: {shown}"
    except GatewayError as err:
        message = err.message
    separator = "&" if "?" in back else "?"
    raise redirect(back + separator + urlencode({"msg": message[:200]}))


def install(app: web.Application) -> None:
    here = Path(__file__).parent
    app[PAGES].add_section("canary", "Variants", f"{UI}/", here / "templates", order=30)
    app.router.add_get(f"{UI}/", variants_page)
    app.router.add_post(f"{UI}/{{route}}", variant_action)
