"""The prompt file: one JSON object per line, checked whole before anything is sent.

Each line holds ``prompt`` (a user message) or ``messages`` (a whole
conversation), and may name an ``id`` (default: ``line-<n>``), a ``model``,
a ``query`` for the retrieval policies and ``sources`` the answer rests on.
Every problem is reported as ``file:line: message``, all of them at once,
so a long file is fixed in one pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

_KNOWN = {"id", "prompt", "messages", "model", "query", "sources"}


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[dict[str, Any]]
    model: str | None = None
    query: str | None = None
    sources: Any = None


@dataclass(frozen=True)
class PromptSet:
    path: str
    prompts: list[Prompt]
    # the file's hash: a resumed run must replay the same prompts
    digest: str


def load_prompts(path: str | Path) -> PromptSet:
    shown = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise _refused([f"{shown}: cannot read the prompt file: {exc.strerror}"]) from None
    errors: list[str] = []
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refused([f"{shown}: not UTF-8 (byte {exc.start})"]) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{shown}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}:{exc.colno}: not JSON: {exc.msg}")
            continue
        prompt = _prompt(item, number, where, errors)
        if prompt is None:
            continue
        if prompt.id in seen:
            errors.append(f"{where}: id {prompt.id!r} is already on line {seen[prompt.id]}")
            continue
        seen[prompt.id] = number
        prompts.append(prompt)
    if not errors and not prompts:
        errors.append(f"{shown}: no prompts in the file")
    if errors:
        raise _refused(errors)
    return PromptSet(shown, prompts, hashlib.sha256(raw).hexdigest())


def _prompt(item: Any, number: int, where: str, errors: list[str]) -> Prompt | None:
    if not isinstance(item, dict):
        errors.append(f"{where}: each line must be a JSON object")
        return None
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        errors.append(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KNOWN))})"
        )
        return None
    pid = item.get("id", f"line-{number}")
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid) == "":
        errors.append(f"{where}: id must be a non-empty string or a number")
        return None
    has_prompt, has_messages = "prompt" in item, "messages" in item
    if has_prompt == has_messages:
        errors.append(f"{where}: give either prompt or messages")
        return None
    if has_prompt:
        if not isinstance(item["prompt"], str) or not item["prompt"].strip():
            errors.append(f"{where}: prompt must be a non-empty string")
            return None
        messages = [{"role": "user", "content": item["prompt"]}]
    else:
        messages = item["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            errors.append(f"{where}: messages must be a non-empty list of objects with a role")
            return None
    for name in ("model", "query"):
        if name in item and not isinstance(item[name], str):
            errors.append(f"{where}: {name} must be a string")
            return None
    return Prompt(str(pid), messages, item.get("model"), item.get("query"), item.get("sources"))


def _refused(errors: list[str]) -> ConfigError:
    return ConfigError(errors[0], errors)
