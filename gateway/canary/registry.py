"""An MLflow model registry, read and written through its REST API.

A route variant may be named ``<registered model>@<alias>``. The version the
alias points at carries its serving URL in a tag (``upstream_tag``, by
default ``gateway.upstream``), which whoever deploys a version sets. The
gateway reads each alias at start and every ``refresh_interval``, so a move
made elsewhere (a CI job, the MLflow UI) is followed; and it moves aliases
itself when a person promotes a candidate or rolls a promotion back.

Endpoints (MLflow REST API 2.0): ``GET
/api/2.0/mlflow/registered-models/alias?name=&alias=`` answers
``{"model_version": {"name", "version", "tags": [{"key", "value"}], …}}``;
``POST /api/2.0/mlflow/registered-models/alias`` with ``{"name", "alias",
"version"}`` moves an alias.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.config import MlflowRegistry
from gateway.errors import RegistryError

API = "/api/2.0/mlflow/registered-models/alias"


@dataclass(frozen=True)
class Resolved:
    model: str
    version: str
    # None: the version has no serving-URL tag, so the variant cannot serve
    url: str | None


def split_model(model: str) -> tuple[str, str]:
    name, alias = model.rsplit("@", 1)
    return name, alias


class MlflowClient:
    def __init__(self, config: MlflowRegistry) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        token = os.environ.get(self.config.token_env) if self.config.token_env else None
        return {"authorization": f"Bearer {token}"} if token else {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, what: str, **kw: Any) -> dict[str, Any]:
        url = self.config.url + API
        try:
            async with self._open().request(method, url, headers=self._headers(), **kw) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise RegistryError(f"model registry: {what}: HTTP {resp.status}: {text[:300]}")
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    raise RegistryError(f"model registry: {what}: the answer is not JSON") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryError(
                f"model registry at {self.config.url} unreachable: {what}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(body, dict):
            raise RegistryError(f"model registry: {what}: the answer is not a JSON object")
        return body

    async def resolve(self, model: str) -> Resolved:
        """The version ``model`` (``name@alias``) points at, and that version's serving URL."""
        name, alias = split_model(model)
        body = await self._call("GET", f"read {model}", params={"name": name, "alias": alias})
        version = body.get("model_version")
        if not isinstance(version, dict) or "version" not in version:
            raise RegistryError(f"model registry: read {model}: no model_version in the answer")
        tags = version.get("tags") or []
        url = next(
            (
                t.get("value")
                for t in tags
                if isinstance(t, dict) and t.get("key") == self.config.upstream_tag
            ),
            None,
        )
        if isinstance(url, str):
            url = url.rstrip("/")
            if not url.startswith(("http://", "https://")):
                url = None
        return Resolved(model, str(version["version"]), url if isinstance(url, str) else None)

    async def move(self, model: str, version: str) -> None:
        """Point the alias of ``model`` at ``version``."""
        name, alias = split_model(model)
        await self._call(
            "POST",
            f"move {model} to version {version}",
            json={"name": name, "alias": alias, "version": version},
        )
