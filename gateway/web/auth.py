"""Bearer tokens with roles for every governance endpoint.

Tokens come from the config (literally or from an environment variable).
With none configured, the gateway makes one admin token at start and writes
it to ``<data_dir>/admin-token`` (mode 0600): there are no anonymous
governance endpoints, even in the quick start.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.config import Settings
from gateway.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

# a role includes every role below it
ROLE_ORDER = {"reviewer": 0, "lead": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        needed = ROLE_ORDER[role]
        return any(ROLE_ORDER[r] >= needed for r in self.roles)


class TokenBook:
    def __init__(self, settings: Settings):
        self._tokens: list[tuple[str, Principal]] = []
        for token in settings.auth.tokens:
            secret = token.secret()
            if not secret:
                log.warning(
                    "token %s has no value (${%s} unset); it is disabled",
                    token.name,
                    token.token_env,
                )
                continue
            self._tokens.append((secret, Principal(token.name, frozenset(token.roles))))
        self.generated_path: Path | None = None
        if not self._tokens:
            self._generate(Path(settings.data_dir))

    def _generate(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "admin-token"
        secret = path.read_text().strip() if path.exists() else ""
        if not secret:
            secret = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secret + "\n")
        self._tokens.append((secret, Principal("admin", frozenset({"admin"}))))
        self.generated_path = path
        log.info("no tokens configured; an admin token is in %s", path)

    def lookup(self, secret: str) -> Principal | None:
        found = None
        for known, principal in self._tokens:
            # compare every token in constant time, so timing reveals nothing
            if hmac.compare_digest(known.encode(), secret.encode()):
                found = principal
        return found

    def from_request(self, request: web.Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self.lookup(value.strip())
        return None

    def require(self, request: web.Request, role: str = "reviewer") -> Principal:
        principal = request.get(PRINCIPAL) or self.from_request(request)
        if principal is None:
            raise Unauthorized("a valid bearer token is required")
        if not principal.has(role):
            raise Forbidden(
                f"this needs the {role} role; {principal.name} has "
                f"{', '.join(sorted(principal.roles))}"
            )
        return principal


TOKENS = web.AppKey("tokens", TokenBook)
PRINCIPAL = web.RequestKey("principal", Principal)
