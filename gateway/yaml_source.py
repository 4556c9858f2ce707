"""YAML loading that remembers where every value came from.

Config and policy errors must point into the file as ``file:line:col``, so we
compose the node tree ourselves, record each node's position under its path,
and turn pydantic's error locations back into positions.
"""

from __future__ import annotations

import difflib
import re
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
    # keys written twice in one mapping, as (path of the key, diagnostic line);
    # filled only when the caller asked to keep going past them
    duplicates: list[tuple[Loc, str]] = field(default_factory=list)

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
        return f"{self.place(loc, at_key=at_key)}: {code}: {message}"

    def place(self, loc: Loc, *, at_key: bool = False) -> str:
        """``file:line:col`` of ``loc`` (of its key with ``at_key``)."""
        line, col = self.key_position(loc) if at_key else self.where(loc)
        return f"{self.path}:{line}:{col}"


_POSITIONED = re.compile(r"^(.*?):(\d+):(\d+): ")


def sorted_by_position(lines: list[str]) -> list[str]:
    """``file:line:col: ...`` lines sorted by file, then line, then column.

    Lines without a position keep their order, after the positioned ones.
    """

    def key(line: str) -> tuple[int, str, int, int]:
        match = _POSITIONED.match(line)
        if match is None:
            return (1, "", 0, 0)
        return (0, match[1], int(match[2]), int(match[3]))

    return sorted(lines, key=key)


# Nesting deeper than this is refused before the composer, which recurses once
# per level, can exhaust Python's stack; no real config comes near it.
MAX_DEPTH = 100
# Values that aliases may add in total: anchors are handy for shared settings,
# but nested aliases expand exponentially (the "billion laughs" file).
MAX_ALIAS_NODES = 10_000

# YAML's line breaks, as PyYAML counts them in its marks
_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


class _Refused(Exception):
    """A document past one of our limits, with the place where it went past it."""

    def __init__(self, code: Diag, mark: Any, message: str):
        super().__init__(message)
        self.code = code
        self.mark = mark
        self.message = message


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that bounds nesting and alias expansion while it composes.

    The limits are checked on the way in, so a hostile file is refused at the
    node that crosses them instead of ending in ``RecursionError`` or a loader
    that expands aliases for ever.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        # id(node) -> (values it stands for with aliases expanded, levels of nesting)
        self._shape: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._check_alias(event)
            return super().compose_node(parent, index)
        nested = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    Diag.YAML_TOO_DEEP,
                    event.start_mark,
                    f"more than {MAX_DEPTH} levels of nested lists and mappings",
                )
        try:
            node = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
        if node is not None:
            self._shape[id(node)] = self._measure(node)
        return node

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # the composer reports the undefined alias
        shape = self._shape.get(id(target))
        if shape is None:
            raise _Refused(
                Diag.YAML_TOO_LARGE,
                event.start_mark,
                f"alias *{event.anchor} is inside the value it names, so it never ends",
            )
        size, height = shape
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _Refused(
                Diag.YAML_TOO_LARGE,
                event.start_mark,
                f"aliases expand to more than {MAX_ALIAS_NODES} values",
            )
        if self._depth + height > MAX_DEPTH:
            raise _Refused(
                Diag.YAML_TOO_DEEP,
                event.start_mark,
                f"alias *{event.anchor} nests values more than {MAX_DEPTH} levels deep",
            )

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            return 1, 0
        shapes = [self._shape.get(id(child), (1, 0)) for child in children]
        return 1 + sum(s for s, _ in shapes), 1 + max((h for _, h in shapes), default=0)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            # PyYAML's scalar constructors let int(), datetime() and friends
            # raise as they like (``0b_``, ``2024-13-45``): pin it on the value
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None


def load_source(
    path: str | Path, text: str | bytes | None = None, *, keep_duplicates: bool = False
) -> Source:
    """Parse one YAML file; raise ``YamlSyntaxError`` with ``file:line:col`` messages.

    ``text`` (the file's contents, as text or bytes) saves reading ``path``.
    Whatever the input, the only error raised is ``YamlSyntaxError``. A key
    written twice in one mapping is an error too; with ``keep_duplicates`` it
    is listed in ``Source.duplicates`` instead and the last value wins, as in
    other YAML loaders, so a validator can report it beside everything else.
    """
    shown = str(path)
    if text is None:
        text = _read(shown, Path(path))
    if isinstance(text, bytes | bytearray | memoryview):
        text = _decode(shown, bytes(text))
    try:
        return _parse(shown, text, keep_duplicates)
    except RecursionError:
        # the limits above should make this unreachable; a stack that is
        # already deep when we are called may still run out
        raise YamlSyntaxError(
            [f"{shown}:1:1: {Diag.YAML_TOO_DEEP}: nested too deeply to read"]
        ) from None


def load_text(path: str | Path) -> str:
    """The file's text; raise ``YamlSyntaxError`` when it is missing, unreadable or not UTF-8."""
    return _decode(str(path), _read(str(path), Path(path)))


def compose_tree(path: str | Path, text: str) -> yaml.Node | None:
    """The node tree of ``text`` (for tools that edit a file in place), within our limits."""
    shown = str(path)
    loader = _open(shown, text)
    try:
        return _compose(shown, loader)
    finally:
        loader.dispose()


def _read(shown: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise YamlSyntaxError([f"{shown}:1:1: {Diag.FILE_NOT_FOUND}: no such file"]) from None
    except IsADirectoryError:
        raise YamlSyntaxError([f"{shown}:1:1: {Diag.UNREADABLE}: is a directory"]) from None
    except OSError as exc:
        problem = exc.strerror or str(exc)
        raise YamlSyntaxError([f"{shown}:1:1: {Diag.UNREADABLE}: {problem}"]) from None


def _decode(shown: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line_start = raw.rfind(b"\n", 0, start) + 1
        line = raw.count(b"\n", 0, start) + 1
        col = len(raw[line_start:start].decode("utf-8", "replace")) + 1
        problem = f"not UTF-8 ({exc.reason} at byte {start})"
        raise YamlSyntaxError(
            [f"{shown}:{line}:{col}: {Diag.INVALID_ENCODING}: {problem}"]
        ) from None


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting breaks as PyYAML's marks do."""
    line, line_start = 1, 0
    for match in _BREAKS.finditer(text, 0, index):
        line += 1
        line_start = match.end()
    return line, index - line_start + 1


def _open(shown: str, text: str) -> _Loader:
    try:
        # the reader refuses control characters as soon as it is built
        return _Loader(text)
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        if isinstance(exc.character, int):
            char = exc.character
            problem = f"character U+{char:04X} is not allowed in YAML"
            if char < 0x20 or 0x7F <= char < 0xA0:
                problem += " (write control characters as escapes in a double-quoted string)"
        else:
            problem = exc.reason
        raise YamlSyntaxError([f"{shown}:{line}:{col}: {Diag.YAML_SYNTAX}: {problem}"]) from None


def _compose(shown: str, loader: _Loader) -> yaml.Node | None:
    try:
        return loader.get_single_node()
    except _Refused as exc:
        line, col = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (1, 1)
        raise YamlSyntaxError([f"{shown}:{line}:{col}: {exc.code}: {exc.message}"]) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError([_yaml_error(shown, exc)]) from None


def _yaml_error(shown: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            where = f"{exc.context_mark.line + 1}:{exc.context_mark.column + 1}"
            problem = f"{problem} ({exc.context} at {where})"
        return f"{shown}:{line}:{col}: {Diag.YAML_SYNTAX}: {problem}"
    return f"{shown}:1:1: {Diag.YAML_SYNTAX}: {exc}"


def _parse(shown: str, text: str, keep_duplicates: bool = False) -> Source:
    loader = _open(shown, text)
    try:
        node = _compose(shown, loader)
        source = Source(shown, None)
        if node is None:
            return source
        _record(node, (), source.positions, source.duplicates, shown, set())
        if source.duplicates and not keep_duplicates:
            raise YamlSyntaxError([line for _, line in source.duplicates])
        try:
            source.data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise YamlSyntaxError([_yaml_error(shown, exc)]) from None
        return source
    finally:
        loader.dispose()


def _record(
    node: yaml.Node,
    loc: Loc,
    positions: dict[Loc, tuple[int, int]],
    duplicates: list[tuple[Loc, str]],
    shown: str,
    seen_nodes: set[int],
) -> None:
    positions[loc] = _mark(node)
    # an alias walks its anchor's nodes again (the loader has bounded how many
    # that can be); their duplicate keys are reported once, where they are
    first_visit = id(node) not in seen_nodes
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        # key -> (where it was first written, the value it holds now)
        seen: dict[str, tuple[tuple[int, int], yaml.Node]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value
            else:
                # a list or mapping as key; the constructor refuses it later
                key = f"<{key_node.id} at {key_node.start_mark.line + 1}>"
            earlier = seen.get(key)
            if earlier is not None:
                first, replaced = earlier
                if first_visit:
                    line, col = _mark(key_node)
                    dotted = ".".join(str(p) for p in loc + (key,))
                    duplicates.append(
                        (
                            loc + (key,),
                            f"{shown}:{line}:{col}: {Diag.DUPLICATE_KEY}: {dotted} is already "
                            f"defined at {shown}:{first[0]}:{first[1]}",
                        )
                    )
                # the last value wins: drop the places of the one it replaces
                _forget(replaced, loc + (key,), positions)
            seen[key] = (earlier[0] if earlier else _mark(key_node), value_node)
            positions[loc + ("<key>", key)] = _mark(key_node)
            _record(value_node, loc + (key,), positions, duplicates, shown, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, loc + (index,), positions, duplicates, shown, seen_nodes)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _forget(node: yaml.Node, loc: Loc, positions: dict[Loc, tuple[int, int]]) -> None:
    """Drop the positions ``_record`` stored for ``node`` at ``loc``."""
    positions.pop(loc, None)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                positions.pop(loc + ("<key>", key_node.value), None)
                _forget(value_node, loc + (key_node.value,), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _forget(item, loc + (index,), positions)


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
        ctx = err.get("ctx") or {}
        if kind == "union_tag_invalid":
            msg = f"unknown kind {err['input']!r}; known kinds: {ctx['expected_tags']}"
            msg += did_you_mean(err["input"], _quoted(ctx["expected_tags"]))
        elif kind in ("literal_error", "enum") and "expected" in ctx:
            msg += did_you_mean(err["input"], _quoted(ctx["expected"]))
        out.append(source.error(base + loc, code, f"{dotted}: {msg}"))
    return out


def did_you_mean(value: Any, choices: typing.Iterable[str]) -> str:
    """`` (did you mean X?)`` when ``value`` is a string close to one of ``choices``.

    Empty when nothing is close enough to be worth suggesting.
    """
    if not isinstance(value, str):
        return ""
    choices = list(choices)
    if value in choices:
        return ""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    if not close:
        # a slip of case (``Block``) is too far for difflib's ratio
        close = [c for c in choices if c.lower() == value.lower()][:1]
    return f" (did you mean {close[0]}?)" if close else ""


# pydantic lists allowed values as their reprs: 'a', 'b' or 'c'
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def _quoted(expected: Any) -> list[str]:
    return [a or b for a, b in _QUOTED.findall(str(expected))]


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
