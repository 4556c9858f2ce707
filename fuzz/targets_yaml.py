"""Fuzz targets for everything the gateway reads as YAML.

The reader itself (``load_source``) on any text or bytes, policy files (as
raw bytes and as YAML documents shaped like policies, with their
``monitors:`` and ``incident_rules:`` sections), ``gateway.yaml`` and source
registries. The only errors allowed are ``ConfigError`` and its subclass
``YamlSyntaxError``, and every line they carry must be a
``file:line:col: code: message`` diagnostic about the file that was read.
"""

from __future__ import annotations

import atexit
import enum
import re
import shutil
import tempfile
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway.config import Settings, load_settings
from gateway.contract.kind import Resources
from gateway.detectors.stale_retrieval import read_registry
from gateway.errors import ConfigError, Diag
from gateway.incidents.rules import RULE_KINDS
from gateway.monitors.windows import MonitorConfig
from gateway.policy.kinds import default_registry
from gateway.policy.loader import default_sections, load_policies
from gateway.yaml_source import load_source

CODES = "|".join(re.escape(d.value) for d in Diag)
# one scratch directory per process: a target rewrites its one file each time
WORK = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
# detectors share what they load (a classifier, an embedder) across inputs
RESOURCES = Resources()

# pieces of YAML syntax, so random inputs reach the parser's deeper states
TOKENS = [
    "\n",
    "  ",
    "    ",
    "- ",
    ": ",
    ":",
    ", ",
    "[",
    "]",
    "{",
    "}",
    "? ",
    "|",
    ">",
    "|-",
    "'",
    '"',
    "#",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "!!int ",
    "!!str ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!timestamp ",
    "!x ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "\t",
    "\r\n",
    "\r",
    "\x07",
    "\x00",
    "\ufeff",
    "\x85",
    "\u2028",
    "~",
    "null",
    "yes",
    "0b_",
    "0x1F",
    "1_000",
    "1.5e3",
    ".inf",
    "2024-13-45",
    "2001-12-14t21:59:43.10-05:00",
    "policies",
    "id",
    "kind",
    "phrases",
    "monitors",
    "incident_rules",
    "routes",
    "a",
    "b",
    "\\x41",
    "\\",
    "%",
]
yamlish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=80).map(
    "".join
)
nested = st.integers(min_value=1, max_value=400).map(
    lambda n: "a: " + "[" * n + "1" + "]" * n + "\n"
)
any_text = st.one_of(st.text(max_size=2000), yamlish, nested)

WORDS = [
    "block",
    "redact",
    "annotate",
    "review",
    "fallback",
    "pass",
    "monitor",
    "enforce",
    "off",
    "low",
    "medium",
    "high",
    "critical",
    "allow",
    "*",
    "default",
    "p1",
    "p2",
    "policy",
    "route",
    "upstream",
    "model",
    "rule",
    "a.*b",
    "(",
    "ACCT-[0-9]{6}",
    "",
]


def check_diagnostics(errors: list[str], path: Path) -> None:
    """Every line is a positioned diagnostic with a known code about ``path``."""
    pattern = re.compile(rf"{re.escape(str(path))}:[1-9][0-9]*:[1-9][0-9]*: (?:{CODES}): ")
    assert errors, "an error without a single diagnostic"
    for line in errors:
        assert pattern.match(line), f"not a positioned diagnostic about {path}: {line!r}"


@settings(database=None)
@given(text=any_text)
def fuzz_load_source_text(text: str) -> None:
    path = WORK / "source.yaml"
    try:
        load_source(path, text)
    except ConfigError as exc:
        check_diagnostics(exc.errors, path)


@settings(database=None)
@given(raw=st.one_of(st.binary(max_size=2000), yamlish.map(lambda t: t.encode("utf-8"))))
def fuzz_load_source_bytes(raw: bytes) -> None:
    path = WORK / "bytes.yaml"
    try:
        load_source(path, raw)
    except ConfigError as exc:
        check_diagnostics(exc.errors, path)


def _load_policy_file(raw: bytes) -> None:
    directory = WORK / "policies"
    directory.mkdir(exist_ok=True)
    path = directory / "main.yaml"
    path.write_bytes(raw)
    try:
        load_policies([directory], resources=RESOURCES)
    except ConfigError as exc:
        check_diagnostics(exc.errors, path)


@settings(database=None)
@given(raw=st.one_of(any_text.map(lambda t: t.encode("utf-8")), st.binary(max_size=2000)))
def fuzz_policy_file(raw: bytes) -> None:
    _load_policy_file(raw)


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Field names of ``model`` and of every model its fields hold."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for inner in _models_in(info.annotation):
            names |= _field_names(inner, seen)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _values(names: list[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**6), max_value=10**6),
        st.floats(allow_nan=False),
        st.text(max_size=12),
        st.sampled_from(WORDS),
    )
    keys = st.one_of(st.sampled_from(names), st.text(max_size=8))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=12,
    )


def _dropped(required: dict[str, Any]) -> st.SearchStrategy[set[str]]:
    """At most one of the ``required`` keys, to leave out."""
    if not required:
        return st.just(set())
    return st.sets(st.sampled_from(sorted(required)), max_size=1)


def _fitting(annotation: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the type ``annotation`` names, so that inputs get past validation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _fitting(args[0], depth)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_fitting(a, depth) for a in args])
    if origin in (list, set, frozenset, tuple):
        return st.lists(_fitting(args[0] if args else Any, depth + 1), max_size=3)
    if origin is dict:
        return st.dictionaries(
            _fitting(args[0], depth + 1), _fitting(args[1], depth + 1), max_size=3
        )
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return st.sampled_from([m.value for m in annotation])
        if issubclass(annotation, bool):
            return st.booleans()
        if issubclass(annotation, int):
            return st.integers(min_value=-2, max_value=5000)
        if issubclass(annotation, float):
            return st.floats(min_value=-1, max_value=5000, allow_nan=False)
        if issubclass(annotation, str):
            return st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
        if issubclass(annotation, BaseModel) and depth < 3:
            return st.fixed_dictionaries(
                {},
                optional={
                    name: _fitting(info.annotation, depth + 1)
                    for name, info in annotation.model_fields.items()
                },
            )
    if annotation is type(None):
        return st.none()
    return _values(["x"])


def _model_documents(
    model: type[BaseModel], required: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings shaped like ``model``: well-typed fields, or (as often) a few stray ones."""
    names = sorted(_field_names(model))
    fitting = {
        name: _fitting(info.annotation)
        for name, info in model.model_fields.items()
        if name not in required
    }
    tidy = st.fixed_dictionaries(required, optional=fitting)
    messy = st.builds(
        lambda base, extra, dropped: {
            k: v for k, v in {**base, **extra}.items() if k not in dropped
        },
        tidy,
        st.dictionaries(st.sampled_from(names), _values(names), max_size=2),
        _dropped(required),
    )
    return st.one_of(tidy, messy)


def _documents(names: list[str], required: dict[str, st.SearchStrategy[Any]]):
    """Mappings with the ``required`` keys (each sometimes left out) and known field names."""
    return st.builds(
        lambda base, extra, dropped: {
            k: v for k, v in {**extra, **base}.items() if k not in dropped
        },
        st.fixed_dictionaries(required),
        st.dictionaries(st.sampled_from(names), _values(names), max_size=5),
        _dropped(required),
    )


@cache
def _policy_documents() -> st.SearchStrategy[dict[str, Any]]:
    registry = default_registry()
    kinds = registry.names()
    policy_names = sorted({n for kind in kinds for n in _field_names(registry.get(kind).config)})
    ids = st.one_of(st.sampled_from(["p1", "p2", "bad id"]), st.text(max_size=8))
    policy = st.one_of(
        # one of the kinds, shaped by its own model
        *[
            _model_documents(registry.get(kind).config, {"id": ids, "kind": st.just(kind)})
            for kind in kinds
        ],
        # any kind (or none) with fields of every kind
        _documents(policy_names, {"id": ids, "kind": st.text(max_size=8)}),
    )
    monitor_names = sorted(_field_names(MonitorConfig))
    monitor = st.one_of(
        _model_documents(MonitorConfig, {"id": st.sampled_from(["m1", "m2", ""])}),
        _documents(monitor_names, {"id": st.sampled_from(["m1", "m2", ""])}),
    )
    rule_names = sorted({n for model in RULE_KINDS.values() for n in _field_names(model)})
    rule_ids = st.sampled_from(["r1", "r2", "Bad!"])
    rule = st.one_of(
        *[
            _model_documents(model, {"id": rule_ids, "source": st.just(source)})
            for source, model in sorted(RULE_KINDS.items())
        ],
        _documents(rule_names, {"id": rule_ids, "source": st.text(max_size=6)}),
    )
    sections = {
        "policies": st.one_of(st.lists(policy, max_size=3), _values(policy_names)),
        "monitors": st.one_of(st.lists(monitor, max_size=2), _values(monitor_names)),
        "incident_rules": st.one_of(st.lists(rule, max_size=2), _values(rule_names)),
        "extra": _values(["x"]),
    }
    assert {"monitors", "incident_rules"} <= set(default_sections())
    return st.dictionaries(st.sampled_from(sorted(sections)), st.none(), max_size=4).flatmap(
        lambda chosen: st.fixed_dictionaries({k: sections[k] for k in chosen})
    )


def _dump(document: Any, allow_unicode: bool) -> bytes:
    return yaml.safe_dump(document, allow_unicode=allow_unicode, sort_keys=False).encode()


@settings(database=None)
@given(document=st.deferred(lambda: _policy_documents()), allow_unicode=st.booleans())
def fuzz_policy_documents(document: dict[str, Any], allow_unicode: bool) -> None:
    _load_policy_file(_dump(document, allow_unicode))


@cache
def _config_documents() -> st.SearchStrategy[Any]:
    names = sorted(_field_names(Settings))
    return st.one_of(
        _model_documents(Settings, {}),
        _documents(names, {"routes": _values(names), "policies": _values(names)}),
        _values(names),
    )


@settings(database=None)
@given(
    source=st.one_of(
        st.deferred(lambda: _config_documents()).map(lambda d: _dump(d, True)),
        any_text.map(lambda t: t.encode("utf-8")),
        st.binary(max_size=1000),
    )
)
def fuzz_config(source: bytes) -> None:
    path = WORK / "gateway.yaml"
    path.write_bytes(source)
    try:
        load_settings(path)
    except ConfigError as exc:
        check_diagnostics(exc.errors, path)


@settings(database=None)
@given(
    source=st.one_of(
        any_text,
        st.lists(_values(["id", "version", "status", "effective_from", "expires_at"])).map(
            lambda rows: yaml.safe_dump({"documents": rows})
        ),
    )
)
def fuzz_source_registry(source: str) -> None:
    path = WORK / "registry.yaml"
    path.write_text(source, encoding="utf-8", errors="surrogatepass")
    try:
        read_registry(path)
    except ConfigError:
        # a registry's errors name the file and the entry; the reader's carry positions
        pass
