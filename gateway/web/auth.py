"""Bearer tokens with roles for every governance endpoint.

Tokens come from the config (literally or from an environment variable).
With none configured, the gateway makes one admin token at start and writes
it to ``<data_dir>/admin-token`` (mode 0600): there are no anonymous
governance endpoints, even in the quick start. Processes starting together
on one data folder (``--workers``) agree on that one token.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.config import Settings
from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.store.files import open_private, private_dir, tighten_file

log = logging.getLogger(__name__)

# a role includes every role below it
ROLE_ORDER = {"reviewer": 0, "lead": 1, "admin": 2}
# roles beside the ladder, each for one narrow job: a client key that posts outcome
# feedback must not read reviews; admin holds them too
SIDE_ROLES = frozenset({"feedback"})


def _token_bytes(secret: str) -> bytes | None:
    """``secret`` as bytes to compare, or None when it cannot be a token.

    A header's bytes that are not UTF-8 reach us as lone surrogates, which
    cannot be encoded; such a value, or one with control characters, is no
    token, and the request is simply unauthenticated.
    """
    if not secret or any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        return None
    try:
        return secret.encode()
    except UnicodeEncodeError:
        return None


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        if role in SIDE_ROLES:
            return role in self.roles or "admin" in self.roles
        needed = ROLE_ORDER[role]
        return any(ROLE_ORDER.get(r, -1) >= needed for r in self.roles)


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
        private_dir(data_dir)
        path = data_dir / "admin-token"
        # older versions, copies and restores can leave the token readable by others
        tighten_file(path)
        secret = _shared_secret(path)
        self._tokens.append((secret, Principal("admin", frozenset({"admin"}))))
        self.generated_path = path
        log.info("no tokens configured; an admin token is in %s", path)

    def knows(self, principal: Principal) -> bool:
        """Whether a token in force still stands for ``principal``, with the same roles."""
        return any(known == principal for _, known in self._tokens)

    def lookup(self, secret: str) -> Principal | None:
        """The principal of ``secret``; None for an unknown or malformed one."""
        presented = _token_bytes(secret)
        if presented is None:
            return None
        found = None
        for known, principal in self._tokens:
            # compare every token in constant time, so timing reveals nothing
            if hmac.compare_digest(known.encode(), presented):
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


def _shared_secret(path: Path) -> str:
    """The secret in ``path``, written there first if it has none.

    Several processes (workers, or gateways sharing a data folder) may start
    at once: each takes an exclusive lock on the file before it looks inside,
    so the first one writes the secret and every other one reads that secret.
    A file left empty (a crash between its creation and its first write, or
    by hand) is filled the same way.
    """
    writable = True
    try:
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
    except PermissionError:
        if not path.exists():
            raise
        # someone else's file that we may only read: it must hold the secret already
        fd, writable = os.open(path, os.O_RDONLY), False
    with os.fdopen(fd, "r+" if writable else "r") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:
            # a file system without locks: go on, as a lone process always could
            log.warning("could not lock %s: %s", path, exc.strerror)
        secret = fh.read().strip()
        if secret:
            return secret
        if not writable:
            raise ConfigError(f"{path} is empty and the gateway may not write it")
        secret = secrets.token_urlsafe(32)
        fh.seek(0)
        fh.truncate()
        fh.write(secret + "\n")
        fh.flush()
        # on disk before any process hands it out, so a crash cannot leave the file empty
        os.fsync(fh.fileno())
        return secret


TOKENS = web.AppKey("tokens", TokenBook)
PRINCIPAL = web.RequestKey("principal", Principal)
