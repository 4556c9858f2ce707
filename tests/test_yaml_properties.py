"""Properties of the YAML reader: what it loads, where it says things are, what it raises."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets_yaml import check_diagnostics, yamlish
from gateway.errors import YamlSyntaxError
from gateway.yaml_source import MAX_DEPTH, Source, load_source

PATH = Path("props.yaml")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# PyYAML's emitter writes U+0085 (NEL) raw into single-quoted scalars when
# allow_unicode is on, where any YAML reader folds it: a dumper bug, left out
text = st.text(st.characters(exclude_characters="\x85", codec="utf-8"), max_size=30)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    text,
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=25,
)


@SETTINGS
@given(document=documents, allow_unicode=st.booleans(), flow=st.sampled_from([False, None]))
def test_dumped_documents_load_back_equal(document, allow_unicode, flow):
    text = yaml.safe_dump(document, allow_unicode=allow_unicode, default_flow_style=flow)
    source = load_source(PATH, text)
    assert source.data == document
    # and through bytes, as policy files are read
    assert load_source(PATH, text.encode("utf-8")).data == document


# For the position check every key is unique and every scalar short and
# single-line, so the text at a position can be compared with the value.
plain_keys = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
short_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
)
shaped = st.recursive(
    short_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(plain_keys, inner, max_size=3)
    ),
    max_leaves=20,
)


def _unique_keys(value: Any, counter: itertools.count) -> Any:
    if isinstance(value, dict):
        return {f"{k}_{next(counter)}": _unique_keys(v, counter) for k, v in value.items()}
    if isinstance(value, list):
        return [_unique_keys(v, counter) for v in value]
    return value


def _rendered(value: Any) -> str:
    """How the scalar ``value`` starts when dumped (the same inside a block document)."""
    return yaml.safe_dump(value, default_flow_style=False).splitlines()[0]


def _check_positions(source: Source, lines: list[str], value: Any, loc: tuple) -> None:
    line, col = source.positions[loc]
    at = lines[line - 1][col - 1 :]
    if isinstance(value, dict) and value:
        for key, item in value.items():
            key_line, key_col = source.positions[loc + ("<key>", key)]
            assert lines[key_line - 1][key_col - 1 :].startswith(f"{key}:"), (key, key_line)
            _check_positions(source, lines, item, loc + (key,))
        # a block mapping starts at its first key
        assert (line, col) == source.positions[loc + ("<key>", next(iter(value)))]
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            _check_positions(source, lines, item, loc + (index,))
        assert at.startswith("-")
        assert line == source.positions[loc + (0,)][0]
    elif isinstance(value, dict | list):
        assert at.startswith("{}" if isinstance(value, dict) else "[]")
    else:
        assert at.startswith(_rendered(value)), (value, line, col, at)


@SETTINGS
@given(document=st.dictionaries(plain_keys, shaped, min_size=1, max_size=4))
def test_every_position_points_at_its_key_or_value(document):
    document = _unique_keys(document, itertools.count())
    text = yaml.safe_dump(document, default_flow_style=False, sort_keys=False)
    source = load_source(PATH, text)
    assert source.data == document
    assert source.positions[()] == (1, 1)
    _check_positions(source, text.split("\n"), document, ())


@SETTINGS
@given(
    text=st.one_of(st.text(max_size=500), yamlish),
    raw=st.one_of(st.binary(max_size=300), st.none()),
)
def test_any_input_loads_or_raises_a_positioned_yaml_error(text, raw):
    for content in (text, raw):
        if content is None:
            continue
        try:
            load_source(PATH, content)
        except YamlSyntaxError as exc:
            check_diagnostics(exc.errors, PATH)


@SETTINGS
@given(depth=st.integers(min_value=1, max_value=3 * MAX_DEPTH), mapping=st.booleans())
def test_nesting_loads_up_to_the_limit_and_is_refused_past_it(depth, mapping):
    if mapping:
        text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "1\n"
    else:
        text = "[" * depth + "1" + "]" * depth
    try:
        source = load_source(PATH, text)
    except YamlSyntaxError as exc:
        assert depth > MAX_DEPTH
        [line] = exc.errors
        assert ": yaml-too-deep: " in line
        where = (MAX_DEPTH + 1, 2 * MAX_DEPTH + 1) if mapping else (1, MAX_DEPTH + 1)
        assert line.startswith(f"{PATH}:{where[0]}:{where[1]}: ")
    else:
        assert depth <= MAX_DEPTH
        data = source.data
        for i in range(depth):
            data = data[f"k{i}"] if mapping else data[0]
        assert data == 1
