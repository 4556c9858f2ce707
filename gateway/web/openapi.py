"""The governance API's OpenAPI 3.1 document, generated from the running admin app.

Each JSON handler carries a description (``@describe(...)``) naming its
request model, its response model per status, a summary, tags and the role
it needs. ``build_document`` walks ``app.router``: the paths, methods and
path parameters come from the routes as registered, the schemas from the
pydantic models, so the document cannot drift from what is served.

Only the JSON API is documented: everything under ``/governance/`` plus the
open ``/healthz``, ``/readyz`` and ``/metrics``. The HTML pages (the review
and incident UIs, the login form, their static files) are not an API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.web.api import json_response

SPEC_PATH = "/governance/v1/openapi.json"
# the open operational endpoints documented beside /governance/
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REF = "#/components/schemas/{model}"
ATTR = "__openapi__"

H = TypeVar("H", bound=Callable[..., Any])


class ApiModel(BaseModel):
    """A JSON body of the API: the fields named are always there, and more may follow.

    Clients must ignore fields they do not know, so a new field is not a
    breaking change; the models describe what handlers return, they do not
    build it.
    """

    model_config = ConfigDict(extra="allow")


class ErrorObject(BaseModel):
    model_config = ConfigDict(title="ErrorObject")
    message: str
    type: str
    param: str | None
    code: str


class ErrorBody(BaseModel):
    """Every error of the governance API: OpenAI's error object, with a stable ``code``."""

    error: ErrorObject


@dataclass(frozen=True)
class Text:
    """A response that is not JSON: a body of ``media_type``."""

    media_type: str


Response = type[BaseModel] | Text


@dataclass(frozen=True)
class Operation:
    summary: str
    tags: tuple[str, ...]
    # the least role the bearer token needs; None for an open endpoint
    auth: str | None
    responses: Mapping[int, Response]
    request: type[BaseModel] | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


def describe(
    *,
    summary: str,
    tags: tuple[str, ...] | list[str],
    responses: Mapping[int, Response],
    auth: str | None = "reviewer",
    request: type[BaseModel] | None = None,
    query: Mapping[str, str] | None = None,
    description: str = "",
) -> Callable[[H], H]:
    """Mark a handler with what the OpenAPI document says about it."""
    op = Operation(
        summary, tuple(tags), auth, dict(responses), request, dict(query or {}), description
    )

    def mark(handler: H) -> H:
        setattr(handler, ATTR, op)
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, ATTR, None)


def is_api_path(path: str) -> bool:
    """Whether ``path`` belongs in the document (the JSON API, not a page)."""
    return path.startswith("/governance/") or path in OPEN_PATHS


def api_routes(app: web.Application) -> list[tuple[str, str, web.AbstractRoute]]:
    """``(method, path, route)`` for every route of the JSON API, HEAD left out."""
    out = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or not is_api_path(path):
            continue
        out.append((route.method, path, route))
    return out


# a named group of a route's pattern; its body may hold one level of parentheses
_GROUP = re.compile(r"\(\?P<(\w+)>((?:[^()]|\([^()]*\))*)\)")
_WORDS = re.compile(r"[\w-]+(?:\|[\w-]+)+")
_DEFAULT_PART = r"[^{}/]+"


def path_parameters(route: web.AbstractRoute) -> list[dict[str, Any]]:
    """The path parameters of ``route``, each with the constraint its pattern sets."""
    info = route.resource.get_info() if route.resource is not None else {}
    pattern = info.get("pattern")
    if pattern is None:
        return []
    params = []
    for name, body in _GROUP.findall(pattern.pattern):
        schema: dict[str, Any] = {"type": "string"}
        if _WORDS.fullmatch(body):
            schema["enum"] = body.split("|")
        elif body != _DEFAULT_PART:
            schema["pattern"] = f"^{body}$"
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


DESCRIPTION = """\
The governance gateway's admin API. Everything under `/governance/` needs a
bearer token (`Authorization: Bearer ...`) with at least the role named by
each operation's `x-required-role`; `/healthz`, `/readyz` and `/metrics`
are open. Every error is the `ErrorBody` object with a stable `code`
(docs/errors.md lists them).

The HTML pages of the admin listener (the review queue under `/review/`,
the incidents UI under `/incidents/`, `/login`, `/logout` and `/ui/static/`)
are for browsers and are not part of this document.
"""


def _content(response: Response, refs: Mapping[type[BaseModel], Any]) -> dict[str, Any]:
    if isinstance(response, Text):
        return {response.media_type: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": refs[response]}}


def build_document(app: web.Application, version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s JSON API; undocumented routes are left out."""
    described = [
        (method, path, route, op)
        for method, path, route in api_routes(app)
        if (op := operation_of(route.handler)) is not None
    ]
    requests = {op.request for *_, op in described if op.request is not None}
    responses = {
        r for *_, op in described for r in op.responses.values() if not isinstance(r, Text)
    }
    responses.add(ErrorBody)
    keys: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation") for m in sorted(requests, key=lambda m: m.__name__)
    ]
    keys += [(m, "serialization") for m in sorted(responses, key=lambda m: m.__name__)]
    mapping, defs = models_json_schema(keys, ref_template=REF)
    request_refs = {m: mapping[(m, "validation")] for m in requests}
    response_refs = {m: mapping[(m, "serialization")] for m in responses}
    error = {"description": "an error", "content": _content(ErrorBody, response_refs)}

    paths: dict[str, dict[str, Any]] = {}
    for method, path, route, op in sorted(described, key=lambda d: (d[1], d[0])):
        item: dict[str, Any] = {
            "operationId": f"{method.lower()}_{getattr(route.handler, '__module__', '')}"
            f".{getattr(route.handler, '__qualname__', '')}".replace(".", "_"),
            "summary": op.summary,
            "tags": list(op.tags),
        }
        if op.description:
            item["description"] = op.description
        params = path_parameters(route)
        params += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": text,
                "schema": {"type": "string"},
            }
            for name, text in op.query.items()
        ]
        if params:
            item["parameters"] = params
        if op.request is not None:
            item["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": request_refs[op.request]}},
            }
        answers: dict[str, Any] = {}
        for status, response in sorted(op.responses.items()):
            answers[str(status)] = {
                "description": f"{status}",
                "content": _content(response, response_refs),
            }
        if op.auth is None:
            item["security"] = []
        else:
            item["security"] = [{"bearerAuth": []}]
            item["x-required-role"] = op.auth
            answers.setdefault("401", {**error, "description": "no valid bearer token"})
            answers.setdefault(
                "403", {**error, "description": f"the token lacks the {op.auth} role"}
            )
        answers["default"] = error
        item["responses"] = answers
        paths.setdefault(path, {})[method.lower()] = item

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Governance gateway admin API",
            "version": version,
            "description": DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


class OpenAPIDocument(BaseModel):
    """The OpenAPI document itself (described loosely: its schema is OpenAPI's own)."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# the document, built once on first use: by then every subsystem has added its routes
_CACHE = web.AppKey("openapi_cache", dict)


@describe(
    summary="This document",
    tags=("meta",),
    responses={200: OpenAPIDocument},
    description="Readable with any valid token, like the rest of /governance/.",
)
async def openapi_json(request: web.Request) -> web.Response:
    cache = request.app[_CACHE]
    if "doc" not in cache:
        cache["doc"] = build_document(request.app)
    return json_response(cache["doc"])


def install(app: web.Application) -> None:
    app[_CACHE] = {}
    app.router.add_get(SPEC_PATH, openapi_json)
