"""Turn a held item into what the item page shows: escaped text with evidence marked.

Responses are untrusted text. Every piece of it goes through ``escape``
before any markup is added, so a ``<script>`` in a response is shown as the
characters it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape


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


def findings_of(item: dict[str, Any]) -> list[FindingView]:
    out: list[FindingView] = []
    texts = item.get("segments") or {}
    for policy in item["record"].get("policies", []):
        for local, f in enumerate(policy.get("findings") or []):
            span = f.get("span") or [0, 0]
            segment = str(f.get("segment", "0"))
            evidence = f.get("evidence") or {}
            text = texts.get(segment)
            view = FindingView(
                index=len(out),
                policy=policy["id"],
                kind=policy.get("kind", ""),
                severity=policy.get("severity", "medium"),
                segment=segment,
                span=(int(span[0]), int(span[1])),
                score=f.get("score", 0.0),
                message=f.get("message", ""),
                evidence=evidence,
                local_index=local,
                matched=text[span[0] : span[1]] if text is not None else evidence.get("match"),
                source_text=evidence.get("source_text"),
                source_id=evidence.get("source_id"),
                evidence_json=json.dumps(evidence, indent=2, ensure_ascii=False, default=str),
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
        severity = max(active, key=lambda f: _RANK.get(f.severity, 0)).severity
        title = escape("; ".join(f"{f.policy}: {f.message}" for f in active))
        parts.append(
            f'<mark class="ev sev-{escape(severity)}" data-findings="{ids}" '
            f'title="{title}">{piece}</mark>'
        )
    return Markup("".join(parts))


_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def relative(deadline: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    delta = deadline - now
    word = "in" if delta >= 0 else "overdue by"
    secs = abs(delta)
    if secs < 90:
        amount = f"{int(secs)}s"
    elif secs < 5400:
        amount = f"{int(secs // 60)}m"
    elif secs < 172800:
        amount = f"{secs / 3600:.1f}h"
    else:
        amount = f"{secs / 86400:.1f}d"
    return f"{word} {amount}"


def stamp(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def pretty(value: Any, limit: int = 20000) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "\n… (truncated)"
