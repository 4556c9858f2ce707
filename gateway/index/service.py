"""The copyright indexes inside the running gateway.

At start the gateway opens the indexes named in ``gateway.yaml`` (or every
built index under ``indexes/`` beside the policy directory) and hands the
manager to detectors as ``resources["indexes"]``. A background task swaps in
a rebuilt index when its manifest changes on disk; ``POST
/governance/v1/indexes/{name}/reload`` does it at once. Scans in flight keep
the index object they started with, so a swap drops no request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from gateway.index.manager import IndexManager
from gateway.index.store import IndexError_

WATCH_INTERVAL = 1.0


def default_root(policy_paths: list[str]) -> Path:
    """``indexes/`` beside the first policy directory, as the copyright kind assumes."""
    if not policy_paths:
        return Path("indexes")
    first = Path(policy_paths[0])
    base = first if first.is_dir() else first.parent
    return base.resolve().parent / "indexes"


def install(gw) -> None:
    settings = gw.settings
    if settings.indexes:
        manager = IndexManager(settings.indexes)
    else:
        manager = IndexManager.from_root(default_root(settings.policies))
    gw.resources["indexes"] = manager
    gw.services["indexes"] = manager

    async def start(gw) -> None:
        gw.background.append(
            asyncio.create_task(manager.watch(WATCH_INTERVAL), name="index-watch")
        )

    gw.on_start.append(start)


def admin_routes(app: web.Application) -> None:
    from gateway.admin import json_response
    from gateway.auth import TOKENS
    from gateway.errors import GatewayError, NotFound
    from gateway.proxy.state import GATEWAY

    async def status(request: web.Request) -> web.Response:
        manager: IndexManager = request.app[GATEWAY].services["indexes"]
        return json_response({"indexes": manager.status()})

    async def reload(request: web.Request) -> web.Response:
        request.app[TOKENS].require(request, "admin")
        manager: IndexManager = request.app[GATEWAY].services["indexes"]
        name = request.match_info["name"]
        if not manager.has(name):
            raise NotFound(f"no index named {name!r} (known: {', '.join(manager.names())})")
        try:
            index = await asyncio.to_thread(manager.reload, name)
        except (IndexError_, OSError, ValueError, KeyError) as exc:
            raise GatewayError(
                f"index {name} could not be loaded; the previous one keeps serving: {exc}",
                code="index-reload-failed",
                status=422,
            ) from None
        return json_response({"reloaded": name, "manifest": index.manifest})

    app.router.add_get("/governance/v1/indexes", status)
    app.router.add_post("/governance/v1/indexes/{name}/reload", reload)
