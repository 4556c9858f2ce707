"""Learning from decisions: add a finding's source or phrase to its policy's allowlist.

The change is made the way a policy author would make it: one line added to
the policy's YAML file, the whole policy set validated with the new file in
place (same loader, same detector builds as a reload), then the file is
replaced atomically and the holder reloads. Comments and layout of the file
are kept because only the one list is touched.

Which list a finding can go on depends on the policy kind:

- ``copyright``: the finding's ``source_id`` goes on ``allow_sources``;
- ``bias``: the flagged sentence, escaped, goes on ``extra_allow_patterns``;
- other kinds have no allowlist, and the reviewer is told so.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import BadRequest, ConfigError, NotFound, YamlSyntaxError
from gateway.policy.loader import policy_files
from gateway.policy.reload import PolicyHolder
from gateway.records.decision import FindingRecord
from gateway.records.review import ReviewItem
from gateway.review.store import ReviewStore
from gateway.web.auth import Principal
from gateway.yaml_source import compose_tree, load_text

# kind -> (list field, how to get the entry from a finding and the response text)
SUPPORTED = {
    "copyright": "allow_sources",
    "bias": "extra_allow_patterns",
}


def entry_for(kind: str, finding: FindingRecord, segment_text: str | None) -> str | None:
    evidence = finding.evidence
    if kind == "copyright":
        source = evidence.get("source_id")
        return str(source) if source else None
    if kind == "bias":
        sentence = evidence.get("sentence")
        if not sentence and segment_text is not None:
            sentence = segment_text[finding.start : finding.end]
        return "^" + re.escape(sentence.strip()) + "$" if sentence else None
    return None


def what_it_adds(kind: str) -> str | None:
    field = SUPPORTED.get(kind)
    if field == "allow_sources":
        return "the matched source to allow_sources"
    if field == "extra_allow_patterns":
        return "the flagged sentence to extra_allow_patterns"
    return None


def _find_policy(root: yaml.Node, policy_id: str) -> yaml.MappingNode | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "policies" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                if not isinstance(item, yaml.MappingNode):
                    continue
                for k, v in item.value:
                    if k.value == "id" and getattr(v, "value", None) == policy_id:
                        return item
    return None


def add_entry(
    text: str, policy_id: str, field: str, entry: str, path: str = "<policy file>"
) -> str:
    """``text`` with ``entry`` appended to ``field`` of policy ``policy_id``; layout kept.

    A file that does not parse (edited by hand since it loaded) raises
    ``YamlSyntaxError`` with positions in ``path``.
    """
    root = compose_tree(path, text)
    policy = _find_policy(root, policy_id) if root is not None else None
    if policy is None:
        raise NotFound(f"policy {policy_id} is not in the file")
    lines = text.splitlines(keepends=True)
    quoted = json.dumps(entry)
    id_key = next(k for k, _ in policy.value if k.value == "id")
    indent = " " * id_key.start_mark.column
    found = next(((k, v) for k, v in policy.value if k.value == field), None)
    if found is not None:
        key, value = found
        if isinstance(value, yaml.SequenceNode):
            if any(getattr(v, "value", None) == entry for v in value.value):
                return text
            if value.flow_style:
                # ``[a, b]``: insert before the closing bracket
                end = value.end_mark.index - 1
                sep = ", " if value.value else ""
                return text[:end] + sep + quoted + text[end:]
            last = value.value[-1]
            line = last.end_mark.line if last.end_mark.column > 0 else last.end_mark.line - 1
            lines.insert(line + 1, " " * value.start_mark.column + "- " + quoted + "\n")
            return "".join(lines)
        if isinstance(value, yaml.ScalarNode) and value.value in ("", "null", "~"):
            lines[key.start_mark.line] = f"{indent}{field}: [{quoted}]\n"
            return "".join(lines)
        raise BadRequest(f"{field} of {policy_id} is not a list")
    # no such key yet: add it right after the id line
    line_no = id_key.start_mark.line
    if not lines[line_no].endswith("\n"):
        lines[line_no] += "\n"
    lines.insert(line_no + 1, f"{indent}{field}: [{quoted}]\n")
    return "".join(lines)


def _validate_and_write(holder: PolicyHolder, target: Path, new_text: str) -> list[str]:
    tmp = target.with_name(f".{target.name}.review-{os.getpid()}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    # the replacement keeps the file's permissions (a 0600 policy file stays private)
    os.chmod(tmp, target.stat().st_mode & 0o7777)
    try:
        paths = [
            str(tmp) if Path(p).resolve() == target.resolve() else str(p)
            for p in policy_files(holder.paths)
        ]
        try:
            holder.load(paths)
        except ConfigError as exc:
            return [e.replace(str(tmp), str(target)) for e in exc.errors]
        os.replace(tmp, target)
        return []
    finally:
        if tmp.exists():
            tmp.unlink()


async def add_to_allowlist(
    db: ReviewStore,
    holder: PolicyHolder,
    item: ReviewItem,
    principal: Principal,
    policy_id: Any,
    finding_index: Any,
) -> dict[str, Any]:
    if not isinstance(policy_id, str):
        raise BadRequest('send "policy" (a policy id) and "finding" (its finding index)')
    try:
        index = int(finding_index)
    except (TypeError, ValueError):
        raise BadRequest('"finding" must be the index of the finding') from None
    verdict = next((p for p in item.record.policies if p.id == policy_id), None)
    if verdict is None or not 0 <= index < len(verdict.findings):
        raise NotFound(f"no finding {index} of policy {policy_id} on this item")
    finding = verdict.findings[index]
    field = SUPPORTED.get(verdict.kind)
    if field is None:
        return {"applied": False, "reason": f"policies of kind {verdict.kind} have no allowlist"}
    entry = entry_for(verdict.kind, finding, (item.segments or {}).get(finding.segment))
    if entry is None:
        return {"applied": False, "reason": "this finding carries nothing to allow"}
    compiled = holder.current.get(policy_id) if holder.current else None
    if compiled is None:
        return {"applied": False, "reason": f"policy {policy_id} is no longer loaded"}
    target = Path(compiled.file)
    try:
        text = load_text(target)
        new_text = add_entry(text, policy_id, field, entry, str(target))
    except YamlSyntaxError as exc:
        return {"applied": False, "reason": "the policy file does not load", "errors": exc.errors}
    if new_text == text:
        return {"applied": False, "reason": f"{entry} is already on {field}"}
    errors = await asyncio.to_thread(_validate_and_write, holder, target, new_text)
    detail = {"policy": policy_id, "file": str(target), "field": field, "entry": entry}
    if errors:
        await db.audit_only(
            item.id, principal.name, "allowlist-rejected", dict(detail, errors=errors)
        )
        return {"applied": False, "reason": "the change does not validate", "errors": errors}
    reloaded = await holder.reload()
    await db.audit_only(
        item.id,
        principal.name,
        "allowlist-add",
        dict(
            detail, reloaded=reloaded, revision=holder.current.revision if holder.current else None
        ),
    )
    return {
        "applied": True,
        "reloaded": reloaded,
        **detail,
        "revision": holder.current.revision if holder.current else None,
    }
