"""YAML loading that remembers where every value came from.

Config and policy errors must point into the file as ``file:line:col``, so we
compose the node tree ourselves, record each node's position under its path,
and turn pydantic's error locations back into positions.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import Diag, YamlSyntaxError

Loc = tuple[str | int, ...]


@dataclass
class Source:
    """A parsed YAML document plus the position of every node in it."""

    path: str
    data: Any
    # path -> (line, col), both 1-based; keys of mappings are stored under
    # ``path + ("<key>", name)`` so unknown fields can point at the key itself.
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Loc) -> tuple[int, int]:
        """Best position for a pydantic ``loc``: the deepest node that exists.

        Elements that are not in the document (a discriminator tag, a missing
        field) are skipped, so the error points at the nearest real node.
        """
        best = self.positions.get((), (1, 1))
        current: Loc = ()
        for part in loc:
            candidate = current + (part,)
            if candidate in self.positions:
                current = candidate
                best = self.positions[candidate]
        return best

    def key_position(self, loc: Loc) -> tuple[int, int]:
        parent, name = loc[:-1], loc[-1]
        pos = self.positions.get(self._resolve(parent) + ("<key>", name))
        return pos if pos is not None else self.where(loc)

    def _resolve(self, loc: Loc) -> Loc:
        current: Loc = ()
        for part in loc:
            if current + (part,) in self.positions:
                current = current + (part,)
        return current

    def error(self, loc: Loc, code: Diag, message: str, *, at_key: bool = False) -> str:
        line, col = self.key_position(loc) if at_key else self.where(loc)
        return f"{self.path}:{line}:{col}: {code}: {message}"


def load_source(path: str | Path, text: str | None = None) -> Source:
    """Parse one YAML file; raise ``YamlSyntaxError`` with ``file:line:col`` messages."""
    shown = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise YamlSyntaxError([f"{shown}:1:1: {Diag.FILE_NOT_FOUND}: no such file"]) from None
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 ({exc.reason} at byte {exc.start})"
            raise YamlSyntaxError([f"{shown}:1:1: {Diag.INVALID_ENCODING}: {problem}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlSyntaxError([f"{shown}:{line}:{col}: {Diag.YAML_SYNTAX}: {problem}"]) from None
    source = Source(shown, None)
    if node is None:
        return source
    duplicates: list[str] = []
    _record(node, (), source.positions, duplicates, shown)
    if duplicates:
        raise YamlSyntaxError(duplicates)
    loader = yaml.SafeLoader("")
    try:
        source.data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(
            [f"{shown}:{line}:{col}: {Diag.YAML_SYNTAX}: {exc.problem}"]
        ) from None
    finally:
        loader.dispose()
    return source


def _record(
    node: yaml.Node,
    loc: Loc,
    positions: dict[Loc, tuple[int, int]],
    duplicates: list[str],
    shown: str,
) -> None:
    positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            if key in seen:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                dotted = ".".join(str(p) for p in loc + (key,))
                duplicates.append(f"{shown}:{line}:{col}: {Diag.DUPLICATE_KEY}: {dotted}")
            seen.add(key)
            positions[loc + ("<key>", key)] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            _record(value_node, loc + (key,), positions, duplicates, shown)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, loc + (index,), positions, duplicates, shown)


_CODES = {
    "missing": Diag.MISSING_FIELD,
    "extra_forbidden": Diag.UNKNOWN_FIELD,
    "union_tag_invalid": Diag.UNKNOWN_KIND,
    "union_tag_not_found": Diag.MISSING_FIELD,
    "literal_error": Diag.INVALID_VALUE,
    "enum": Diag.INVALID_VALUE,
    "value_error": Diag.INVALID_VALUE,
    "assertion_error": Diag.INVALID_VALUE,
}


def validation_messages(
    source: Source,
    exc: ValidationError,
    *,
    base: Loc = (),
    label: str = "",
    model: type[BaseModel] | None = None,
    data: Any = None,
) -> list[str]:
    """Turn a pydantic ``ValidationError`` into ``file:line:col: code: message`` lines.

    ``base`` is where the validated object sits in the document, ``label`` the
    prefix shown in messages (a policy id, say). With ``model`` and ``data``,
    unknown fields get a "did you mean" suggestion.
    """
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        code = _CODES.get(
            kind, Diag.INVALID_TYPE if kind.endswith(("_type", "_parsing")) else Diag.INVALID_VALUE
        )
        shown_loc = [str(p) for p in loc if not _is_tag(p, loc)]
        dotted = ".".join(([label] if label else []) + shown_loc) or label or "<root>"
        if kind == "extra_forbidden":
            hint = ""
            if model is not None:
                choices = _fields_at(model, data, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), choices, n=1, cutoff=0.6)
                if close:
                    hint = f" (did you mean {close[0]}?)"
                elif choices:
                    hint = f" (allowed: {', '.join(sorted(choices))})"
            out.append(source.error(base + loc, code, f"{dotted}{hint}", at_key=True))
            continue
        msg = err["msg"]
        if kind == "union_tag_invalid":
            msg = f"unknown kind {err['input']!r}; known kinds: {err['ctx']['expected_tags']}"
        out.append(source.error(base + loc, code, f"{dotted}: {msg}"))
    return out


def _is_tag(part: str | int, loc: Loc) -> bool:
    # pydantic inserts the discriminator value and function-wrapper names in loc.
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def _fields_at(model: type[BaseModel], data: Any, loc: Loc) -> list[str]:
    """Field names of the model found at ``loc`` inside ``data`` (best effort)."""
    current: Any = model
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            current = _item_type(current)
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part in current.model_fields:
                current = current.model_fields[part].annotation
                node = node.get(part) if isinstance(node, dict) else None
                continue
            return []
        # a discriminated union: the tag picks the member
        member = _union_member(current, part)
        if member is None:
            return []
        current = member
    current = _unwrap(current, node)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _item_type(tp: Any) -> Any:
    tp = _strip_annotated(tp)
    if get_origin(tp) in (list, tuple, set):
        args = get_args(tp)
        return args[0] if args else Any
    if get_origin(tp) is dict:
        return get_args(tp)[1]
    return tp


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_member(tp: Any, tag: str | int) -> Any:
    tp = _strip_annotated(tp)
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            arg = _strip_annotated(arg)
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                kind = arg.model_fields.get("kind")
                if kind is not None and tag in get_args(kind.annotation):
                    return arg
    return None


def _unwrap(tp: Any, node: Any) -> Any:
    tp = _strip_annotated(tp)
    if get_origin(tp) in (Union, types.UnionType):
        if isinstance(node, dict) and "kind" in node:
            member = _union_member(tp, node["kind"])
            if member is not None:
                return member
        for arg in get_args(tp):
            arg = _strip_annotated(arg)
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return tp
