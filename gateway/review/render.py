"""Turn a held item into what the item page shows: escaped text with evidence marked.

Responses are untrusted text. Every piece of it goes through ``escape``
before any markup is added, so a ``<script>`` in a response is shown as the
characters it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from gateway.records.review import ReviewItem
from gateway.secretmask import mask_evidence, mask_secrets
from gateway.severity import Severity


@dataclass
class FindingView:
    index: int
    policy: str
    kind: str
    severity: str
    segment: str
    span: tuple[int, int]
    score: float
    message: str
    evidence: dict[str, Any]
    # index of the finding within its policy's list (for the allowlist action)
    local_index: int = 0
    matched: str | None = None
    source_text: str | None = None
    source_id: str | None = None
    evidence_json: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # an image finding's thumbnails (the answer's, the protected source's) as data URIs
    image: str | None = None
    source_image: str | None = None


# only data URIs of raster images the gateway drew are put in an ``src``
_IMAGE_URI = re.compile(r"data:image/(?:jpeg|png|webp);base64,[A-Za-z0-9+/]+={0,2}")
IMAGE_KEYS = ("thumbnail", "source_thumbnail")


def _image(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= 400_000 and _IMAGE_URI.fullmatch(value):
        return value
    return None


def findings_of(item: ReviewItem) -> list[FindingView]:
    out: list[FindingView] = []
    texts = item.segments or {}
    for policy in item.record.policies:
        for local, f in enumerate(policy.findings):
            # the record's evidence is masked when it is made; masked again here
            # for items held before that, and for the text the span points at
            evidence = mask_evidence(f.evidence)
            images = [_image(evidence.get(k)) for k in IMAGE_KEYS]
            # shown as pictures, not as a wall of base64 among the fields
            evidence = {k: v for k, v in evidence.items() if k not in IMAGE_KEYS}
            text = texts.get(f.segment)
            matched = text[f.start : f.end] if text is not None else evidence.get("match")
            view = FindingView(
                index=len(out),
                policy=policy.id,
                kind=policy.kind,
                severity=policy.severity,
                segment=f.segment,
                span=(f.start, f.end),
                score=f.score,
                message=mask_secrets(f.message),
                evidence=evidence,
                local_index=local,
                matched=mask_secrets(matched) if matched else matched,
                source_text=evidence.get("source_text"),
                source_id=evidence.get("source_id"),
                evidence_json=json.dumps(evidence, indent=2, ensure_ascii=False, default=str),
                image=images[0],
                source_image=images[1],
            )
            out.append(view)
    return out


def highlight(text: str, findings: list[FindingView]) -> Markup:
    """``text`` escaped, with each finding's span wrapped in ``<mark>``; overlaps nest as one."""
    n = len(text)
    cuts = {0, n}
    spans = []
    for f in findings:
        start, end = max(0, min(f.span[0], n)), max(0, min(f.span[1], n))
        if end > start:
            spans.append((start, end, f))
            cuts.update((start, end))
    points = sorted(cuts)
    parts: list[str] = []
    for a, b in zip(points, points[1:], strict=False):
        piece = escape(text[a:b])
        active = [f for s, e, f in spans if s <= a and b <= e]
        if not active:
            parts.append(str(piece))
            continue
        ids = " ".join(f"f{f.index}" for f in active)
        severity = max(active, key=lambda f: _rank(f.severity)).severity
        title = escape("; ".join(f"{f.policy}: {f.message}" for f in active))
        parts.append(
            f'<mark class="ev sev-{escape(severity)}" data-findings="{ids}" '
            f'title="{title}">{piece}</mark>'
        )
    return Markup("".join(parts))


def _rank(severity: str) -> int:
    try:
        return Severity(severity).rank
    except ValueError:
        return 0
