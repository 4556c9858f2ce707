"""Unicode folding that keeps a map back to the original offsets.

Matching runs on folded text (case-folded, accents and compatibility forms
removed, zero-width characters dropped), but evidence spans and redaction
must point into the original text, so non-ASCII folding records where each
folded character came from.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# characters used to hide a word from naive matching: zero-width joiners,
# soft hyphen, word joiner, byte-order mark
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\u00ad\ufeff")


@lru_cache(maxsize=65536)
def _fold_char(ch: str) -> str:
    if ch in _INVISIBLE:
        return ""
    decomposed = unicodedata.normalize("NFKD", ch)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def fold(text: str, case: bool = True) -> tuple[str, list[int] | None]:
    """Return ``(folded, origin)``; ``origin[i]`` is the source index of folded char i.

    ``origin`` is ``None`` when folding kept every offset (plain ASCII).
    """
    if text.isascii():
        return (text.lower() if case else text), None
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        piece = _fold_char(ch) if case else _fold_nocase(ch)
        out.append(piece)
        origin.extend([i] * len(piece))
    return "".join(out), origin


@lru_cache(maxsize=65536)
def _fold_nocase(ch: str) -> str:
    if ch in _INVISIBLE:
        return ""
    decomposed = unicodedata.normalize("NFKD", ch)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def to_source_span(origin: list[int] | None, start: int, end: int, limit: int) -> tuple[int, int]:
    """Map a folded ``[start, end)`` back to the original text."""
    if origin is None:
        return start, end
    if start >= len(origin):
        return limit, limit
    src_start = origin[start]
    src_end = origin[end - 1] + 1 if end > 0 and end - 1 < len(origin) else limit
    return src_start, src_end
