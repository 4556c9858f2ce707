"""The index service: the ``IndexManager`` detectors share, its watcher and admin API.

At install the gateway opens the indexes named in ``gateway.yaml`` (or every
built index under ``indexes/`` beside the policy directory) and shares the
manager with detectors as ``Resources.indexes``. A background task swaps in
a rebuilt index when its manifest changes on disk; ``POST
/governance/v1/indexes/{name}/reload`` does it at once. Scans in flight keep
the index object they started with, so a swap drops no request.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.errors import IndexReloadFailed, IndexUnavailable, NotFound
from gateway.index.manager import IndexManager
from gateway.index_service import cli
from gateway.proxy.hookspecs import Subsystem
from gateway.web.api import json_response
from gateway.web.auth import TOKENS
from gateway.web.openapi import ApiModel, ErrorBody, describe

WATCH_INTERVAL = 1.0

INDEXES = web.AppKey("indexes", IndexManager)


def default_root(policy_paths: list[str]) -> Path:
    """``indexes/`` beside the first policy directory, as the copyright kind assumes."""
    if not policy_paths:
        return Path("indexes")
    first = Path(policy_paths[0])
    base = first if first.is_dir() else first.parent
    return base.resolve().parent / "indexes"


class IndexService(Subsystem):
    name = "indexes"

    @classmethod
    def cli_commands(cls, commands: argparse._SubParsersAction) -> None:
        cli.register(commands)

    def install(self) -> None:
        settings = self.gw.settings
        if settings.indexes:
            self.manager = IndexManager(settings.indexes)
        else:
            self.manager = IndexManager.from_root(default_root(settings.policies))
        self.gw.resources.indexes = self.manager

    async def start(self) -> None:
        self.gw.spawn(self.manager.watch(WATCH_INTERVAL), "index-watch")

    def admin_routes(self, app: web.Application) -> None:
        app[INDEXES] = self.manager
        app.router.add_get("/governance/v1/indexes", status)
        app.router.add_post("/governance/v1/indexes/{name}/reload", reload)


class IndexState(ApiModel):
    path: str
    loaded: bool
    generation: int | None
    counts: dict[str, Any] | None
    error: str | None


class IndexStatus(ApiModel):
    indexes: dict[str, IndexState]


class IndexReloaded(ApiModel):
    reloaded: str
    # the index manifest (``IndexManifest``) of the generation now serving
    manifest: dict[str, Any]


@describe(
    summary="The indexes and their loaded generations",
    tags=("indexes",),
    responses={200: IndexStatus},
)
async def status(request: web.Request) -> web.Response:
    return json_response({"indexes": request.app[INDEXES].status()})


@describe(
    summary="Reload one index from disk now",
    tags=("indexes",),
    auth="admin",
    responses={200: IndexReloaded, 404: ErrorBody, 422: ErrorBody},
)
async def reload(request: web.Request) -> web.Response:
    request.app[TOKENS].require(request, "admin")
    manager = request.app[INDEXES]
    name = request.match_info["name"]
    if not manager.has(name):
        raise NotFound(f"no index named {name!r} (known: {', '.join(manager.names())})")
    try:
        index = await asyncio.to_thread(manager.reload, name)
    except (IndexUnavailable, OSError, ValueError, KeyError) as exc:
        raise IndexReloadFailed(
            f"index {name} could not be loaded; the previous one keeps serving: {exc}"
        ) from None
    return json_response({"reloaded": name, "manifest": index.manifest.to_json()})
