"""Credential-looking strings, told by an identifier instead of their value.

Evidence (a finding's matched text, a quoted sentence, an incident sample)
must say *which* secret leaked without leaking it again: the audit trail,
incident pages and alert sinks are read by far more people than the answer
was. A secret becomes

    sk-live-…[openai-key sha256:1a2b3c4d, 48 chars, ends 9xQ]

its fixed prefix (which names the issuer, not the secret), its type, the
first 8 hex digits of the SHA-256 of the whole secret (enough to check it
against a known key, far too little to recover a random one), its length
and its last three characters, as key dashboards show them. The middle is
never kept.

Known formats are recognised by their prefixes; any other long token that
mixes upper case, lower case and digits with high entropy is masked as a
``token``. Lower-case hex is left alone: it is far more often a content
hash or an id than a secret.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections import Counter
from typing import Any

# not preceded by a token character, so a prefix inside a longer word is no match
_B = r"(?<![A-Za-z0-9_\-])"
_B64 = r"[A-Za-z0-9_\-]"

# (type, pattern); the ``p`` group is the fixed prefix shown in the identifier.
# Order is priority: an earlier type wins where two overlap.
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (
            "private-key",
            r"(?P<p>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"
            # a block cut short (evidence is truncated) is masked to the end
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)",
        ),
        ("anthropic-key", _B + r"(?P<p>sk-ant-(?:[a-z]+\d\d-)?)" + _B64 + "{20,}"),
        ("openai-key", _B + r"(?P<p>sk-(?:proj-|live-|test-|svcacct-|admin-)?)" + _B64 + "{20,}"),
        ("stripe-key", _B + r"(?P<p>(?:sk|rk|pk)_(?:live|test)_)[A-Za-z0-9]{16,}"),
        ("aws-access-key-id", _B + r"(?P<p>A(?:KIA|SIA|BIA|CCA))[0-9A-Z]{16}(?![A-Za-z0-9])"),
        ("github-token", _B + r"(?P<p>gh[pousr]_)[A-Za-z0-9]{30,}"),
        ("github-token", _B + r"(?P<p>github_pat_)[A-Za-z0-9_]{22,}"),
        ("slack-token", _B + r"(?P<p>xox[abposre]-)[A-Za-z0-9\-]{10,}"),
        ("slack-webhook", r"(?P<p>hooks\.slack\.com/services/)[A-Za-z0-9_/]{20,}"),
        ("google-api-key", _B + r"(?P<p>AIza)" + _B64 + "{35}"),
        ("jwt", _B + r"(?P<p>eyJ)" + _B64 + r"{8,}\." + _B64 + r"{8,}\." + _B64 + "{8,}"),
    )
)

# every known format's prefix: one cheap search tells whether any is worth trying
_HINT = re.compile(
    r"sk[-_]|[rp]k_|A(?:KIA|SIA|BIA|CCA)|gh[pousr]_|github_pat_|xox[a-z]-|hooks\.slack\.com"
    r"|AIza|eyJ|-----BEGIN"
)

# a long run of token characters; judged by _looks_random before it is masked
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2}(?![A-Za-z0-9+/_=\-])")
# a random token of 32+ characters (base62, base64url) measures over 4.2 bits
# per character and changes character class at well over this share of its
# characters; a long camelCase or snake_case name measures about as much
# entropy, but changes class only where its words begin
_MIN_ENTROPY = 3.8
_MIN_CHANGES = 0.25
_HEX = frozenset("0123456789abcdef-")
# show the last characters only when this many are hidden before them
_ENDS_AFTER = 16
# evidence keys that hold the operator's own identifiers (an allowlist
# entry is made from them), never a client's secret
_ID_KEYS = frozenset({"source_id"})


def _class(c: str) -> int:
    return 0 if c.isupper() else 1 if c.islower() else 2 if c.isdigit() else 3


def _looks_random(token: str) -> bool:
    """A token drawn at random, not a name, a word chain or a hex digest."""
    core = token.rstrip("=")
    if set(core.lower()) <= _HEX:
        return False
    # separators (``-``, ``_``, ``+``, ``/``) join words; only the characters count
    classes = [k for k in map(_class, core) if k != 3]
    if len(set(classes)) < 2:
        return False
    # random text changes between upper case, lower case and digits at almost
    # every other character; a name only where a word begins (an upper-case
    # letter followed by lower case starts a word, so it does not count)
    changes = sum(a != b and (a, b) != (0, 1) for a, b in zip(classes, classes[1:], strict=False))
    if changes < _MIN_CHANGES * (len(classes) - 1):
        return False
    counts = Counter(core)
    n = len(core)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) >= _MIN_ENTROPY


def fingerprint(secret: str) -> str:
    """First 8 hex digits of the secret's SHA-256 (lone surrogates kept as they came)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def identify(secret: str, kind: str = "token", prefix: str | None = None) -> str:
    """The identifier that stands for ``secret``: prefix, type, hash, length, last characters."""
    if prefix is None:
        prefix = secret[:4] if len(secret) >= 4 + _ENDS_AFTER else ""
    parts = [f"{kind} sha256:{fingerprint(secret)}", f"{len(secret)} chars"]
    if kind != "private-key" and len(secret) - len(prefix) >= _ENDS_AFTER:
        parts.append(f"ends {secret[-3:]}")
    return f"{prefix}…[{', '.join(parts)}]"


def find_secrets(text: str) -> list[tuple[int, int, str, str]]:
    """``(start, end, type, prefix)`` of each credential-looking string, in order."""
    found: list[tuple[int, int, str, str]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e, _, _ in found)

    for kind, pattern in _KINDS if _HINT.search(text) else ():
        for m in pattern.finditer(text):
            if free(m.start(), m.end()):
                found.append((m.start(), m.end(), kind, m.group("p")))
    for m in _TOKEN.finditer(text):
        if free(m.start(), m.end()) and _looks_random(m.group()):
            found.append((m.start(), m.end(), "token", m.group()[:4]))
    found.sort()
    return found


def mask_secrets(text: str) -> str:
    """``text`` with every credential-looking string replaced by its identifier."""
    found = find_secrets(text)
    if not found:
        return text
    out: list[str] = []
    pos = 0
    for start, end, kind, prefix in found:
        out.append(text[pos:start])
        out.append(identify(text[start:end], kind, prefix))
        pos = end
    out.append(text[pos:])
    return "".join(out)


# the keys of an image finding's evidence that hold a thumbnail the gateway
# drew, as a data URI: its base64 is pixels, not a credential, and masked it
# shows nothing. Only at the top level of an image finding's evidence, and
# only when the bytes are a small JPEG, PNG or WebP image
_IMAGE_KEYS = frozenset({"thumbnail", "source_thumbnail"})
_IMAGE_URI = re.compile(r"data:image/(?:jpeg|png|webp);base64,[A-Za-z0-9+/]+={0,2}")
# the largest data URI the review page puts in an ``src`` (gateway.review.render)
IMAGE_URI_MAX_CHARS = 400_000


def is_thumbnail(value: str) -> bool:
    """A data URI, within the size cap, whose decoded bytes begin as a JPEG, PNG or WebP."""
    if len(value) > IMAGE_URI_MAX_CHARS or not _IMAGE_URI.fullmatch(value):
        return False
    b64 = value.partition(",")[2]
    try:
        head = base64.b64decode(b64[:16] + "=" * (-len(b64[:16]) % 4))
    except ValueError:
        return False
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


def mask_evidence(value: Any, key: str | None = None) -> Any:
    """A copy of JSON-like evidence with secrets masked in every string (ids kept).

    ``key`` names ``value`` when it is one top-level field of an evidence dict.
    """
    if isinstance(value, str) and key in _IMAGE_KEYS and is_thumbnail(value):
        return value
    if isinstance(value, dict) and value.get("match_type") == "image":
        return {
            k: v if k in _IMAGE_KEYS and isinstance(v, str) and is_thumbnail(v) else _mask(v, k)
            for k, v in value.items()
        }
    return _mask(value, key)


def _mask(value: Any, key: str | None = None) -> Any:
    if isinstance(value, str):
        return value if key in _ID_KEYS else mask_secrets(value)
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value
