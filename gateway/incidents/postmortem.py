"""A blameless post-mortem draft in Markdown, built from an incident and its timeline."""

from __future__ import annotations

import time
from typing import Any

from gateway.incidents.model import Incident, TimelineEvent

SOURCE_NAMES = {
    "policy": "policy breach rule",
    "detector_errors": "detector error rule",
    "monitor": "windowed monitor",
    "upstream_errors": "upstream health rule",
}


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _span(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    text = "-" if value is None or value == "" else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _code(value: Any) -> str:
    text = str(value).replace("`", "'").replace("\n", " ")
    return f"`{text}`"


def render(
    inc: Incident, events: list[TimelineEvent], *, decision_url: str = "", now: float | None = None
) -> str:
    """The draft; ``decision_url`` prefixes decision ids to make them links."""
    now = time.time() if now is None else now
    out: list[str] = []
    add = out.append
    add(f"# Post-mortem (draft): {inc.title}")
    add("")
    add(
        f"_Blameless draft generated {_utc(now)} from incident {_code(inc.id)}. It describes "
        "what the systems did and what people knew at the time; it assigns no blame._"
    )
    add("")

    add("## Summary")
    add("")
    end = inc.resolved_at or now
    contained = [e for e in events if e.kind == "contained"]
    detected_by = SOURCE_NAMES.get(inc.source, inc.source)
    sentence = (
        f"From {_utc(inc.first_seen)} to {_utc(inc.last_seen)}, "
        f"{inc.requests} request(s) on route {_code(inc.route or '-')}"
        f"{' (upstream ' + _code(inc.upstream) + ')' if inc.upstream else ''} "
        f"produced {inc.breach_count} signal(s) matching rule {_code(inc.rule_id or '-')}. "
        f"The {detected_by} opened a {inc.severity} incident at {_utc(inc.opened_at)}"
    )
    if contained:
        sentence += f"; it was contained at {_utc(contained[0].ts)}"
    if inc.resolved_at is not None:
        sentence += f" and resolved at {_utc(inc.resolved_at)}"
    add(sentence + ".")
    add("")
    add("| Field | Value |")
    add("|---|---|")
    for name, value in (
        ("Incident", inc.id),
        ("Severity", inc.severity),
        ("State", inc.state),
        ("Route", inc.route),
        ("Upstream", inc.upstream),
        ("Policy", inc.policy),
        ("Rule", inc.rule_id),
        ("Dedup key", inc.dedup_key),
        ("Opened", _utc(inc.opened_at)),
        ("Resolved", _utc(inc.resolved_at)),
        ("Duration", _span(end - inc.first_seen)),
    ):
        add(f"| {name} | {_cell(value)} |")
    add("")

    add("## Impact")
    add("")
    add(f"- Requests affected: {inc.requests}")
    add(f"- Breaches recorded: {inc.breach_count}")
    add(f"- Characters released before a cut: {inc.chars_released} (in {inc.cuts} cut stream(s))")
    if inc.by_action:
        actions = ", ".join(f"{k}: {v}" for k, v in sorted(inc.by_action.items()))
        add(f"- Actions taken on the affected requests: {actions}")
    add("")
    add("### Breaches per policy")
    add("")
    add("| Policy | Breaches |")
    add("|---|---|")
    for name, count in sorted(inc.by_policy.items(), key=lambda kv: (-kv[1], kv[0])):
        add(f"| {_cell(name)} | {count} |")
    add("")

    add("## Detection")
    add("")
    opened = next((e for e in events if e.kind == "opened"), None)
    add(f"- Source: {detected_by} {_code(inc.rule_id or '-')}")
    if opened is not None:
        add(f"- Trigger: {_cell(opened.data.get('reason') or opened.message)}")
    add(f"- First signal: {_utc(inc.first_seen)}")
    add(
        f"- Incident opened: {_utc(inc.opened_at)} "
        f"(time to detect: {_span(inc.opened_at - inc.first_seen)})"
    )
    if inc.monitor:
        add(
            f"- Monitor: {_code(inc.monitor.get('monitor'))} rule "
            f"{_code(inc.monitor.get('rule'))}, value {inc.monitor.get('value')} "
            f"against threshold {inc.monitor.get('threshold')}"
        )
    add("")

    add("## Containment")
    add("")
    switches = [e for e in events if e.kind in ("contained", "restored")]
    if not switches:
        add("No containment actions were taken.")
    else:
        add("| Time | Action | Mode | Route | By |")
        add("|---|---|---|---|---|")
        for e in switches:
            action = "contain" if e.kind == "contained" else "restore"
            mode = e.data.get("mode") or ("manual declaration" if e.data.get("manual") else "-")
            add(
                f"| {_utc(e.ts)} | {action} | {_cell(mode)} | {_cell(e.data.get('route'))} "
                f"| {_cell(e.actor)} |"
            )
    add("")

    add("## Timeline")
    add("")
    add("| Time | Event | By | Details |")
    add("|---|---|---|---|")
    for e in events:
        add(f"| {_utc(e.ts)} | {_cell(e.kind)} | {_cell(e.actor)} | {_cell(e.message)} |")
    add("")

    add("## Evidence samples")
    add("")
    samples = list(inc.samples)
    if not samples:
        add("No samples were kept.")
    else:
        add("| Decision | Time | Policy | Action | Finding |")
        add("|---|---|---|---|---|")
        for s in samples:
            did = s.get("decision_id")
            if did and decision_url:
                ref = f"[{did}]({decision_url.rstrip('/')}/{did})"
            else:
                ref = _cell(did)
            finding = s.get("finding") or s.get("error") or s.get("rule") or ""
            evidence = s.get("evidence") or {}
            if evidence:
                finding = f"{finding} {evidence}".strip()
            add(
                f"| {ref} | {_utc(s.get('ts'))} | {_cell(s.get('policy') or s.get('monitor'))} "
                f"| {_cell(s.get('action'))} | {_cell(finding[:300])} |"
            )
    if inc.review_items:
        add("")
        add("Linked review items: " + ", ".join(_code(r) for r in inc.review_items))
    add("")

    add("## Root cause")
    add("")
    add(
        "_To be written: what made the model produce these responses, and why the gateway's "
        "defences caught them when they did._"
    )
    add("")
    add("## Contributing factors")
    add("")
    add("_To be written._")
    add("")
    add("## What went well, what went poorly")
    add("")
    add("_To be written._")
    add("")
    add("## Action items")
    add("")
    add("| Action | Owner | Priority | Ticket |")
    add("|---|---|---|---|")
    add("|  |  |  |  |")
    add("")
    return "\n".join(out)
