"""Admin UI sessions: a token login kept in an HttpOnly, SameSite=Strict cookie.

One session serves every page of the admin listener (the review queue and
the incidents pages). Sessions live in memory: a restart asks people to log
in again, and the token itself is never stored in the cookie. Each session
carries its own CSRF token, which every form posts back; the login form,
which comes before any session, is protected by an HMAC of a nonce cookie.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from gateway.web.auth import Principal

COOKIE = "gw_session"
LOGIN_COOKIE = "gw_login"


@dataclass
class Session:
    id: str
    principal: Principal
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)


class SessionBook:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}
        # signs the login form's CSRF token, which exists before any session
        self._login_key = secrets.token_bytes(32)

    def create(self, principal: Principal) -> Session:
        self._expire()
        session = Session(
            secrets.token_urlsafe(32), principal, secrets.token_urlsafe(32), time.time() + self.ttl
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires < time.time():
            self._sessions.pop(session_id, None)
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = time.time()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            self._sessions.pop(sid, None)

    def login_csrf(self, nonce: str) -> str:
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
