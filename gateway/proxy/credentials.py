"""Client credentials in request headers: never stored, only hashed to an id."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

# request headers never stored with a held item: credentials and session state
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "openai-api-key",
        "anthropic-api-key",
    }
)
_SECRET_WORDS = ("key", "token", "secret", "auth", "password", "signature", "credential")


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without anything that looks like a credential, names lower-cased."""
    out = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _SECRET_HEADERS or any(w in low for w in _SECRET_WORDS):
            continue
        out[low] = value
    return out


def api_key_id(headers: Mapping[str, str]) -> str | None:
    """A stable id for the client's API key that does not reveal it."""
    raw = headers.get("x-api-key") or headers.get("api-key")
    if not raw:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        raw = value.strip() if scheme.lower() == "bearer" else ""
    if not raw:
        return None
    return "key_" + hashlib.sha256(b"gateway-review:" + raw.encode()).hexdigest()[:32]


def tenant_of(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-governance-tenant") or headers.get("openai-organization")
