"""The contract between the policy engine and every detector.

A detector is a pure object built once when policies load. For each response
segment (one choice, one content block) the engine calls ``start`` and then
``feed`` with the whole text seen so far, once per arriving chunk and a last
time with ``final=True``. A scan keeps its own cursor, so each call looks only
at new text plus the overlap it needs; it returns only findings it has not
returned before. Non-streamed responses are one ``feed(text, final=True)``.

Detectors never decide what happens: they return findings with evidence, and
the policy's action decides.

Images in an answer are segments of their own, with empty text and the image
in ``ScanContext.image``. A detector declares which segments it reads with
``modality`` (``"text"``, the default when absent, or ``"image"``); the
engine starts it only on those, so text policies never see image segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Finding:
    """One match: a character span of the segment text plus its evidence."""

    start: int
    end: int
    score: float = 1.0
    message: str = ""
    # detector-specific, JSON-serialisable: matched phrase, source id and
    # metadata, match type, group, signals…
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "span": [self.start, self.end],
            "score": round(float(self.score), 4),
            "message": self.message,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image in an answer, as the adapter found it; never decoded by the adapter."""

    # where it sits in the answer, for messages and evidence: ``data[0].b64_json``
    where: str
    # base64 (possibly a ``data:`` URI); None when the answer gave only a link
    data: str | None = None
    url: str | None = None
    media_type: str | None = None


@dataclass(slots=True)
class ScanContext:
    """What a detector may know about the exchange besides the text."""

    route: str = ""
    model: str | None = None
    # the end user's latest message text, for relevance checks
    query: str | None = None
    # RAG sources found in the response (or request); each a dict with at
    # least ``id`` and optionally ``text``, ``url``, ``updated_at``…
    sources: list[dict[str, Any]] = field(default_factory=list)
    # problems met while extracting sources (malformed metadata…)
    source_errors: list[str] = field(default_factory=list)
    # key of the segment being scanned (choice index, block index…)
    segment: str = "0"
    # the client's request body, already parsed; never mutate
    request: dict[str, Any] | None = None
    # the image of an image segment (None for text segments)
    image: ImagePart | None = None


class Scan(Protocol):
    """Per-segment scanning state."""

    def feed(self, text: str, final: bool) -> list[Finding]:
        """Scan what is new in ``text`` (the whole segment so far)."""
        ...

    def hold_from(self, text: str) -> int:
        """Offset from which ``text`` must stay unreleased for this detector."""
        ...


class Detector(Protocol):
    """Built once per policy; ``start`` is called per response segment."""

    # characters behind the newest text that must stay unreleased so a match
    # starting in them is still caught; ``None`` means the whole text is needed
    hold_back: int | None
    # True for CPU-heavy detectors: the engine runs their scans in a worker
    # thread with the policy timeout, off the event loop
    blocking: bool

    def start(self, ctx: ScanContext) -> Scan: ...

    # Optional: ``modality = "image"`` makes the engine start the detector on
    # image segments only (see the module docstring); absent means "text".
    # Optional: ``warm()`` loads what the detector would otherwise load on
    # first use (a model). The gateway calls it in a worker thread at start
    # and after each reload, and /readyz reports "loading" until it returns,
    # so the first request does not pay for the load.


# A stream arrives a few characters at a time; scanning after every chunk
# would rescan the overlap hundreds of times per answer. Waiting for this
# many new characters cuts that work several-fold for a few characters more
# of hold-back.
MIN_SCAN_CHARS = 16


class WindowScan:
    """A ``Scan`` for detectors whose matches are at most ``overlap`` chars long.

    Each ``feed`` calls ``find(text, start, final)`` from ``overlap`` chars
    before the previous end, and drops findings already returned. Text past
    the last scan stays held until it is scanned.
    """

    __slots__ = ("_find", "_overlap", "_scanned", "_seen", "_min_new")

    def __init__(self, find, overlap: int, min_new: int = MIN_SCAN_CHARS):
        self._find = find
        self._overlap = overlap
        self._scanned = 0
        self._seen: set[tuple[int, int, str]] = set()
        self._min_new = min_new

    def feed(self, text: str, final: bool) -> list[Finding]:
        if not final and len(text) - self._scanned < self._min_new:
            return []
        start = max(0, self._scanned - self._overlap)
        self._scanned = len(text)
        out = []
        for finding in self._find(text, start, final):
            key = (finding.start, finding.end, finding.message)
            if key not in self._seen:
                self._seen.add(key)
                out.append(finding)
        return out

    def hold_from(self, text: str) -> int:
        return max(0, self._scanned - self._overlap)


class WholeTextScan:
    """A ``Scan`` for detectors that can only judge the complete text."""

    __slots__ = ("_find",)

    def __init__(self, find):
        self._find = find

    def feed(self, text: str, final: bool) -> list[Finding]:
        return self._find(text) if final else []

    def hold_from(self, text: str) -> int:
        return 0
