"""What a stored request may keep of the client's headers and query, and the key id.

Nothing here stores a credential. Headers are kept from an allowlist, so a
secret under a name nobody thought of (``x-client-pass``) is dropped; the
query string keeps its parameter names, never their values
(``?api-key=...`` is common with Azure-style clients); the client's API key
is kept only as a salted hash, which lets that client poll its held result.

Header values arrive as text that may hold bytes that were not UTF-8
(aiohttp keeps them as lone surrogates). They are made valid text before
they are stored, and hashed as the bytes that were sent, so a stray byte
never fails a hold.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from gateway.secretmask import mask_secrets

# request headers a held item keeps: what says which client, SDK and API
# version sent the request, for the reviewer and for support. Everything
# else is dropped, credentials and session state included.
SAFE_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "user-agent",
        "x-request-id",
        "traceparent",
        "x-governance-tenant",
        # OpenAI
        "openai-beta",
        "openai-organization",
        "openai-project",
        "x-stainless-lang",
        "x-stainless-package-version",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
        "x-stainless-os",
        "x-stainless-arch",
        "x-stainless-retry-count",
        # Anthropic
        "anthropic-version",
        "anthropic-beta",
    }
)
# a kept header value or query name is cut to this many characters
MAX_VALUE_CHARS = 256
MAX_NAME_CHARS = 64
MAX_QUERY_NAMES = 50
REDACTED = "<redacted>"

# C0 and C1 controls and DEL: never part of a token, a name or a header value
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def raw_bytes(value: str) -> bytes:
    """The bytes a header value was decoded from (lone surrogates hold the undecodable ones)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte decoding made
        return value.encode("utf-8", "surrogatepass")


def clean_text(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` as valid text: undecodable bytes become U+FFFD, controls are dropped."""
    if not value.isascii():
        value = raw_bytes(value).decode("utf-8", "replace")
    return _CONTROL.sub("", value)[:limit]


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted ``headers``, names lower-cased, values cleaned and secrets masked."""
    out = {}
    for name, value in headers.items():
        low = name.lower()
        if low in SAFE_HEADERS:
            # cleaned first: a control character inside a key would hide it from masking
            out[low] = mask_secrets(clean_text(value))
    return out


def query_names(query: str) -> str:
    """The query string with every value replaced: ``api-key=<redacted>&debug``."""
    parts = []
    for name, value in parse_qsl(query, keep_blank_values=True)[:MAX_QUERY_NAMES]:
        name = mask_secrets(clean_text(name, MAX_NAME_CHARS))
        parts.append(f"{name}={REDACTED}" if value else name)
    return "&".join(parts)


def _raw_credential(headers: Mapping[str, str]) -> str:
    raw = headers.get("x-api-key") or headers.get("api-key")
    if raw:
        return raw.strip()
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def api_key_id(headers: Mapping[str, str]) -> str | None:
    """A stable id for the client's API key that does not reveal it.

    The id is a hash of the bytes the client sent, whatever they are: a key
    that is not valid UTF-8 still gets an id (the upstream, not the
    gateway, decides whether it is a valid key).
    """
    raw = _raw_credential(headers)
    if not raw:
        return None
    return "key_" + hashlib.sha256(b"gateway-review:" + raw_bytes(raw)).hexdigest()[:32]


def tenant_of(headers: Mapping[str, str]) -> str | None:
    raw = headers.get("x-governance-tenant") or headers.get("openai-organization")
    tenant = clean_text(raw, MAX_NAME_CHARS * 2).strip() if raw else ""
    return tenant or None
