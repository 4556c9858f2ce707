"""Admin UI sessions: a token login kept in an HttpOnly, SameSite=Strict cookie.

One session serves every page of the admin listener (the review queue and
the incidents pages). Sessions live in the gateway's store (the
``ui_sessions`` table), so every process sharing that store knows every
session: a load balancer may send each request to any of them, and a
restart logs nobody out. The token itself is never stored in the cookie.

The store keeps only the SHA-256 of a session id, never the id: whoever
reads the table (a backup, a read-only database account) learns no cookie
that logs them in. The id is 32 random bytes, so the plain hash needs no
salt or stretching.

A session remembers the name and roles of whoever logged in, not their
token. Each check asks the tokens in force whether that principal still
exists with those roles: as sessions now outlive a restart, removing a
token from the config (or changing its roles) must end the sessions made
with it.

Each session carries its own CSRF token, which every form posts back. The
login form, which comes before any session, is protected by an HMAC of a
nonce cookie; its key is made once and kept in the store, so a form served
by one process may be posted to another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from gateway.store.base import Store
from gateway.web.auth import Principal, TokenBook

COOKIE = "gw_session"
LOGIN_COOKIE = "gw_login"
# the row of ``kv_state`` that holds the login form's signing key
LOGIN_KEY = "ui:login_key"


@dataclass
class Session:
    id: str
    principal: Principal
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)


def _hashed(session_id: str) -> str:
    # a cookie's undecodable bytes arrive as lone surrogates, which encode() refuses
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class SessionBook:
    def __init__(self, store: Store, tokens: TokenBook, ttl: float):
        self.store = store
        self.tokens = tokens
        self.ttl = ttl
        # signs the login form's CSRF token, which exists before any session; see load_login_key
        self._login_key: bytes | None = None

    async def load_login_key(self) -> None:
        """Read the login form's key from the store, making it on the very first start.

        Processes starting at once each offer a key; the first insert wins and
        every one of them reads back that same key.
        """
        await self.store.execute(
            "INSERT INTO kv_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            LOGIN_KEY,
            secrets.token_hex(32),
            time.time(),
        )
        row = await self.store.fetchone("SELECT value FROM kv_state WHERE key = ?", LOGIN_KEY)
        if row is None:
            raise RuntimeError(f"the store kept no {LOGIN_KEY!r} row")
        self._login_key = bytes.fromhex(row["value"])

    async def create(self, principal: Principal) -> Session:
        now = time.time()
        # logins are rare: a good moment to forget sessions that ran out
        await self.store.execute("DELETE FROM ui_sessions WHERE expires_at < ?", now)
        session = Session(
            secrets.token_urlsafe(32),
            principal,
            secrets.token_urlsafe(32),
            now + self.ttl,
            now,
        )
        await self.store.execute(
            "INSERT INTO ui_sessions (id_hash, principal, roles, csrf, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            _hashed(session.id),
            principal.name,
            json.dumps(sorted(principal.roles)),
            session.csrf,
            session.created,
            session.expires,
        )
        return session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``; None for an unknown, expired or orphaned one."""
        if not session_id:
            return None
        row = await self.store.fetchone(
            "SELECT principal, roles, csrf, created_at, expires_at FROM ui_sessions "
            "WHERE id_hash = ?",
            _hashed(session_id),
        )
        if row is None:
            return None
        if row["expires_at"] < time.time():
            await self.drop(session_id)
            return None
        principal = Principal(row["principal"], frozenset(json.loads(row["roles"])))
        if not self.tokens.knows(principal):
            # its token is gone from the config, or has other roles now; the row is
            # left to expire, as a process still on the old config may serve it
            return None
        return Session(session_id, principal, row["csrf"], row["expires_at"], row["created_at"])

    async def drop(self, session_id: str | None) -> None:
        if session_id:
            await self.store.execute(
                "DELETE FROM ui_sessions WHERE id_hash = ?", _hashed(session_id)
            )

    def login_csrf(self, nonce: str) -> str:
        if self._login_key is None:
            raise RuntimeError("the login key is read when the admin app starts")
        # a cookie's undecodable bytes arrive as lone surrogates, which encode() refuses
        return hmac.new(
            self._login_key, nonce.encode("utf-8", "surrogatepass"), "sha256"
        ).hexdigest()

    def check_login_csrf(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return same(token, self.login_csrf(nonce))


def same(a: object, b: str | None) -> bool:
    """Constant-time equality of two non-empty strings (any characters, even malformed)."""
    if not (isinstance(a, str) and a and b):
        return False
    # compare_digest refuses non-ASCII str; bytes compare whatever was sent
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), str(b).encode("utf-8", "surrogatepass")
    )


SESSIONS = web.AppKey("sessions", SessionBook)
