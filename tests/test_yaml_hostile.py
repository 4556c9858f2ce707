"""Files YAML cannot read, or that are built to hurt the reader, give positioned errors.

Every YAML file the gateway reads (policy files and their sections,
``gateway.yaml``, test cases, lexicons, registries) goes through one reader;
whatever is in the file, the answer is ``file:line:col: code: message`` lines,
never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.detectors.stale_retrieval import read_registry
from gateway.errors import ConfigError, YamlSyntaxError
from gateway.policy.loader import load_policies
from gateway.review.allowlist import add_entry
from gateway.yaml_source import MAX_ALIAS_NODES, MAX_DEPTH, load_source

ROOT = Path(__file__).resolve().parents[1]
BELL = "character U+0007 is not allowed in YAML"
_HINT = "(write control characters as escapes in a double-quoted string)"

# the bell is at line 4, column 18 (inside a single-quoted scalar, where YAML forbids it)
POLICY_WITH_BELL = "policies:\n  - id: no-x\n    kind: phrases\n    phrases: ['ab\x07']\n"
BELL_AT = "4:18"
DEEP = "policies: " + "[" * 3000 + "]" * 3000 + "\n"


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- the command line --------------------------------------------------------------


def test_validate_reports_a_control_character_with_its_position(tmp_path):
    path = write(tmp_path / "main.yaml", POLICY_WITH_BELL)
    result = gateway("policy", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{path}:{BELL_AT}: yaml-syntax: {BELL} " + _HINT]
    assert "Traceback" not in result.stderr


def test_validate_refuses_deep_nesting_at_the_level_past_the_limit(tmp_path):
    path = write(tmp_path / "main.yaml", DEEP)
    result = gateway("policy", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    # "policies: " is 10 columns; the opening bracket past the limit comes next
    assert result.stdout.splitlines() == [
        f"{path}:1:{10 + MAX_DEPTH}: yaml-too-deep: "
        f"more than {MAX_DEPTH} levels of nested lists and mappings"
    ]
    assert "RecursionError" not in result.stderr and "Traceback" not in result.stderr


def test_policy_test_reports_an_unreadable_case_file(tmp_path):
    write(tmp_path / "main.yaml", "policies:\n  - id: no-x\n    kind: phrases\n    phrases: [x]\n")
    cases = write(tmp_path / "main_test.yaml", "cases:\n  - name: a\x07\n")
    result = gateway("policy", "test", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{cases}:2:12: yaml-syntax: {BELL}" in result.stdout
    assert "Traceback" not in result.stderr


def test_policy_test_reports_an_unreadable_policy_file(tmp_path):
    policy = write(tmp_path / "main.yaml", POLICY_WITH_BELL)
    write(
        tmp_path / "main_test.yaml",
        "cases:\n  - name: a\n    text: x\n    expect: {action: block}\n",
    )
    result = gateway("policy", "test", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{policy}:{BELL_AT}: yaml-syntax: {BELL}" in result.stdout
    assert "Traceback" not in result.stderr


def test_serve_with_a_broken_config_exits_with_its_position(tmp_path):
    config = write(tmp_path / "gateway.yaml", "routes:\n  - name: a\x07\n")
    result = gateway("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{config}:2:12: yaml-syntax: {BELL} {_HINT}"]


# -- each kind of file ---------------------------------------------------------------


def _errors(call) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call()
    return caught.value.errors


def test_config_file_with_control_character(tmp_path):
    config = write(tmp_path / "gateway.yaml", "store:\n  url: \x1bsqlite\n")
    assert _errors(lambda: load_settings(config)) == [
        f"{config}:2:8: yaml-syntax: character U+001B is not allowed in YAML {_HINT}"
    ]


def test_config_file_nested_too_deep(tmp_path):
    config = write(tmp_path / "gateway.yaml", "routes: " + "{a: " * 3000 + "}" * 3000)
    [line] = _errors(lambda: load_settings(config))
    assert line.startswith(f"{config}:1:") and ": yaml-too-deep: " in line


def test_monitors_section_with_control_character(tmp_path):
    path = write(
        tmp_path / "policies" / "monitors.yaml",
        "monitors:\n  - id: credit\n    routes: [credit]\n    window: 2\x0800\n",
    )
    assert _errors(lambda: load_policies([path.parent])) == [
        f"{path}:4:14: yaml-syntax: character U+0008 is not allowed in YAML {_HINT}"
    ]


def test_a_monitor_id_defined_twice_is_placed_at_the_second_one(tmp_path):
    monitor = "  - id: scores\n    score: {path: score}\n    rules: {score_drift: {}}\n"
    path = write(tmp_path / "policies" / "monitors.yaml", "monitors:\n" + monitor * 2)
    assert _errors(lambda: load_policies([path.parent])) == [
        f"{path}:5:9: duplicate-id: monitor id 'scores' is already defined in {path}"
    ]


def test_incident_rules_section_with_control_character(tmp_path):
    path = write(
        tmp_path / "policies" / "rules.yaml",
        "incident_rules:\n  - id: leaks\n    source: pol\x7ficy\n",
    )
    assert _errors(lambda: load_policies([path.parent])) == [
        f"{path}:3:16: yaml-syntax: character U+007F is not allowed in YAML {_HINT}"
    ]


def test_incident_rules_nested_too_deep(tmp_path):
    path = write(
        tmp_path / "policies" / "rules.yaml",
        "incident_rules:\n  - id: leaks\n    source: " + "[" * 500 + "]" * 500 + "\n",
    )
    assert _errors(lambda: load_policies([path.parent])) == [
        # three levels (file, list, rule) are open before the first bracket, at column 13
        f"{path}:3:{13 + MAX_DEPTH - 3}: yaml-too-deep: "
        f"more than {MAX_DEPTH} levels of nested lists and mappings"
    ]


def test_source_registry_with_control_character(tmp_path):
    path = write(tmp_path / "registry.yaml", "documents:\n  - id: a\x00\n")
    [line] = _errors(lambda: read_registry(path))
    assert line == f"{path}:2:10: yaml-syntax: character U+0000 is not allowed in YAML {_HINT}"


def test_bias_lexicon_with_control_character_fails_the_build_at_both_places(tmp_path):
    lexicon = write(tmp_path / "policies" / "lex.yaml", "attribute: age\ngroups:\x0c\n")
    policy = write(
        tmp_path / "policies" / "bias.yaml",
        "policies:\n  - id: fair\n    kind: bias\n    lexicons: [lex.yaml]\n"
        "    signals: [lexicon]\n",
    )
    errors = _errors(lambda: load_policies([policy]))
    assert len(errors) == 1
    assert errors[0].startswith(f"{policy}:2:5: build-failed: fair: ")
    assert f"{lexicon}:2:8: yaml-syntax: character U+000C" in errors[0]


def test_not_utf8_points_at_the_first_bad_byte(tmp_path):
    path = tmp_path / "policies" / "main.yaml"
    path.parent.mkdir()
    path.write_bytes(b"policies:\n  - id: caf\xe9\n")
    assert _errors(lambda: load_policies([path.parent])) == [
        f"{path}:2:12: invalid-encoding: not UTF-8 (invalid continuation byte at byte 21)"
    ]


def test_a_directory_where_a_file_belongs(tmp_path):
    assert _errors(lambda: load_source(tmp_path)) == [f"{tmp_path}:1:1: unreadable: is a directory"]


# -- the reader's limits and PyYAML's loose ends ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
            # a: 11 values, each *a 11 more, each *b 111, each *c 1111: the 8th *c is too many
            f"4:36: yaml-too-large: aliases expand to more than {MAX_ALIAS_NODES} values",
            id="alias-bomb",
        ),
        pytest.param(
            "a: &a [1, *a]\n",
            "1:11: yaml-too-large: alias *a is inside the value it names, so it never ends",
            id="alias-loop",
        ),
        pytest.param(
            "a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 60 + "*a" + "]" * 60 + "\n",
            f"2:64: yaml-too-deep: alias *a nests values more than {MAX_DEPTH} levels deep",
            id="deep-through-alias",
        ),
        pytest.param(
            "a: 0b_\n",
            "1:4: yaml-syntax: cannot read this value: invalid literal for int() with base 2: ''",
            id="int-without-digits",
        ),
        pytest.param(
            "when: 2024-13-45\n",
            "1:7: yaml-syntax: cannot read this value: month must be in 1..12",
            id="impossible-date",
        ),
        pytest.param(
            "a:\n  b: 1\n  b: 2\n",
            "3:3: duplicate-key: a.b is already defined at f.yaml:2:3",
            id="duplicate-key",
        ),
        pytest.param(
            "a: 'open\n",
            "2:1: yaml-syntax: found unexpected end of stream "
            "(while scanning a quoted scalar at 1:4)",
            id="unterminated-quote",
        ),
    ],
)
def test_hostile_documents(text, expected):
    with pytest.raises(YamlSyntaxError) as caught:
        load_source("f.yaml", text)
    assert caught.value.errors == [f"f.yaml:{expected}"]


def test_plain_anchors_and_merge_keys_still_load():
    source = load_source(
        "f.yaml", "base: &base {action: block, severity: high}\none:\n  <<: *base\n  id: one\n"
    )
    assert source.data["one"] == {"action": "block", "severity": "high", "id": "one"}
    # values reached through an alias are placed where the anchor wrote them
    assert source.positions[("one", "<<", "severity")] == (1, 39)
    assert source.positions[("one", "id")] == (4, 7)


def test_allowlist_edit_of_a_broken_file_raises_a_positioned_error():
    with pytest.raises(YamlSyntaxError) as caught:
        add_entry("policies:\n  - id: a\x07\n", "a", "allow_sources", "doc", "p.yaml")
    assert caught.value.errors == [f"p.yaml:2:10: yaml-syntax: {BELL} {_HINT}"]
