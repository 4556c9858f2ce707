"""Words, word n-gram hashes, winnowing, sentences and chunks.

Everything lexical in the copyright index works on *words*: runs of word
characters in Unicode-folded text, so case, accents, full-width forms and
zero-width characters do not hide a copy. Each word keeps its character span
in the original text, which is what evidence and redaction need.

Word and n-gram hashes must be identical in the process that built an index
and in the one that queries it, so they use crc32 and fixed 64-bit mixing,
never Python's salted ``hash``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from itertools import islice

import numpy as np

from gateway.textnorm import fold

_WORD = re.compile(r"\w+")
# a sentence ends at . ! ? (optionally closed by quotes or brackets) before
# white space, or at a blank line
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")

_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@dataclass(slots=True)
class Words:
    """Word hashes and their ``[start, end)`` character spans in the original text."""

    hashes: np.ndarray  # uint64, one per word
    starts: list[int]
    ends: list[int]
    tokens: list[str]  # the folded words themselves

    def __len__(self) -> int:
        return len(self.starts)


def words(text: str, offset: int = 0) -> Words:
    """Split ``text`` into folded words; spans are shifted by ``offset``."""
    folded, origin = fold(text)
    starts: list[int] = []
    ends: list[int] = []
    tokens: list[str] = []
    for m in _WORD.finditer(folded):
        s, e = m.span()
        if origin is None:
            starts.append(s + offset)
            ends.append(e + offset)
        else:
            starts.append(origin[s] + offset)
            ends.append(origin[e - 1] + 1 + offset)
        tokens.append(m.group())
    hashes = np.fromiter((_word_hash(t) for t in tokens), dtype=np.uint64, count=len(tokens))
    return Words(hashes, starts, ends, tokens)


_HASHES: dict[str, int] = {}


def _word_hash(token: str) -> int:
    # words repeat (Zipf), so a dictionary beats encoding and crc32 every time
    h = _HASHES.get(token)
    if h is None:
        if len(_HASHES) > 500_000:
            _HASHES.clear()
        h = _HASHES[token] = zlib.crc32(token.encode("utf-8"))
    return h


def tokens(text: str) -> list[str]:
    """Just the folded words of ``text`` (fast: no spans, no hashes)."""
    return _WORD.findall(fold(text)[0])


def spans(text: str, offset: int = 0, upto: int | None = None) -> tuple[list[int], list[int]]:
    """Start and end offsets of the first ``upto`` words of ``text``, shifted by ``offset``."""
    folded, origin = fold(text)
    starts: list[int] = []
    ends: list[int] = []
    for m in islice(_WORD.finditer(folded), upto):
        s, e = m.span()
        if origin is None:
            starts.append(s + offset)
            ends.append(e + offset)
        else:
            starts.append(origin[s] + offset)
            ends.append(origin[e - 1] + 1 + offset)
    return starts, ends


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every run of ``n`` consecutive words (empty if fewer words)."""
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        h = h * _MUL + word_hashes[j : j + count] + np.uint64(j + 1)
    # splitmix64 finaliser: winnowing takes minima, so the bits must be uniform
    h ^= h >> _S30
    h *= _MIX1
    h ^= h >> _S27
    h *= _MIX2
    h ^= h >> _S31
    return h


def winnow(hashes: np.ndarray, window: int) -> np.ndarray:
    """Positions chosen by winnowing: the minimum of every ``window`` consecutive hashes.

    Any run of ``window`` consecutive n-grams contains a chosen one, so a copy
    of at least ``window + n - 1`` words always shares an anchor with its
    source, while only about ``2 / (window + 1)`` of the n-grams are stored.
    """
    m = len(hashes)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    if m <= window:
        return np.asarray([int(np.argmin(hashes))], dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(hashes, window)
    picks = view.argmin(axis=1) + np.arange(len(view))
    return np.unique(picks)


# a period after these does not end a sentence ("Mr. Smith", "U.S. sales")
_ABBREV = frozenset(
    "mr mrs ms dr st jr sr no co corp inc ltd vs etc gen gov sen rep prof".split()
    + "u.s a.m p.m e.g i.e".split()
)


def _ends_sentence(text: str, cut: int, nxt: int) -> bool:
    if nxt < len(text) and text[nxt].islower():
        return False
    if text[cut - 1 : cut] != ".":
        return True
    word = text[max(0, cut - 6) : cut - 1].rsplit(None, 1)[-1:] or [""]
    last = word[0].lower().lstrip("(\"'")
    return not (last in _ABBREV or (len(last) == 1 and last.isalpha()))


def sentences(text: str, start: int = 0) -> list[tuple[int, int]]:
    """Sentence spans of ``text[start:]``; the last one may be unfinished."""
    out: list[tuple[int, int]] = []
    pos = start
    for m in _SENTENCE_END.finditer(text, start):
        if m.group().strip() == "" and not _ends_sentence(text, m.start(), m.end()):
            continue
        if text[pos : m.start()].strip():
            out.append(_strip_span(text, pos, m.start()))
        pos = m.end()
    if text[pos:].strip():
        out.append(_strip_span(text, pos, len(text)))
    return out


def _strip_span(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def chunk_spans(w: Words, size: int, overlap: int) -> list[tuple[int, int]]:
    """Word-index ranges ``[a, b)`` of passages of ``size`` words, ``overlap`` shared.

    A short tail is folded into the previous passage rather than left as a
    fragment too small to embed meaningfully.
    """
    n = len(w)
    if n == 0:
        return []
    stride = max(1, size - overlap)
    spans: list[tuple[int, int]] = []
    a = 0
    while True:
        b = min(n, a + size)
        spans.append((a, b))
        if b >= n:
            break
        a += stride
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < size // 4:
        last = spans.pop()
        spans[-1] = (spans[-1][0], last[1])
    return spans


BLOOM_PROBES = 5


def _probes(hashes: np.ndarray, bits: int) -> np.ndarray:
    """Bit positions for each hash (double hashing), shape ``(len(hashes), BLOOM_PROBES)``."""
    h1 = hashes & np.uint64(0xFFFFFFFF)
    h2 = (hashes >> np.uint64(32)) | np.uint64(1)
    steps = np.arange(BLOOM_PROBES, dtype=np.uint64)
    return (h1[:, None] + steps[None, :] * h2[:, None]) & np.uint64(bits - 1)


def bloom_size(count: int) -> int:
    """Bits for ``count`` items at about 10 bits each (1% false positives), a power of 2."""
    return 1 << max(16, int(np.ceil(np.log2(max(count, 1) * 10))))


def bloom_add(bloom: np.ndarray, hashes: np.ndarray) -> None:
    """Set the bits of ``hashes`` in ``bloom`` (a uint8 array of ``bits / 8`` bytes)."""
    if len(hashes) == 0:
        return
    pos = _probes(hashes, len(bloom) * 8).ravel()
    np.bitwise_or.at(bloom, (pos >> np.uint64(3)).astype(np.int64), _BIT[pos & np.uint64(7)])


def bloom_has(bloom: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Whether each hash may be in the set (never False for a member)."""
    if len(hashes) == 0 or len(bloom) == 0:
        return np.zeros(len(hashes), bool)
    pos = _probes(hashes, len(bloom) * 8)
    hit = bloom[(pos >> np.uint64(3)).astype(np.int64)] & _BIT[pos & np.uint64(7)]
    return (hit != 0).all(axis=1)


_BIT = (1 << np.arange(8)).astype(np.uint8)
