"""What a policy author sees: every error at once and in order, hints, test case positions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError, YamlSyntaxError
from gateway.policy.loader import check_files, load_policies
from gateway.policy.testing import run_tests
from gateway.yaml_source import load_source, sorted_by_position
from tests.conftest import write_policies

ROOT = Path(__file__).resolve().parents[1]

# one of each problem that used to hide the others: a duplicate key (which
# stopped the file), duplicate ids and a bad pattern (which waited for the
# rest to be fixed), plus values a letter or two away from an allowed one
MAIN = """\
policies:
  - id: a
    kind: phrases
    action: redcat
    phrases: [x]
  - id: b
    kind: phrase
    action: block
  - id: c
    kind: phrases
    patterns: ["(unclosed"]
  - id: a
    kind: phrases
    phrases: [y]
  - id: d
    kind: phrases
    action: block
    action: redact
    phrases: [z]
"""

OTHER = """\
policies:
  - id: c
    kind: phrases
    phrases: [q]
    mode: enforc
"""


def test_validate_reports_every_error_at_once_sorted(tmp_path):
    main = write_policies(tmp_path, MAIN, "main.yaml")
    other = write_policies(tmp_path, OTHER, "other.yaml")
    errors = check_files([tmp_path])
    assert [e.split(": ", 2)[:2] for e in errors] == [
        [f"{main}:4:13", "invalid-value"],
        [f"{main}:7:11", "unknown-kind"],
        [f"{main}:11:15", "invalid-value"],
        [f"{main}:12:9", "duplicate-id"],
        [f"{main}:18:5", "duplicate-key"],
        [f"{other}:2:9", "duplicate-id"],
        [f"{other}:5:11", "invalid-value"],
    ]
    assert errors[0].endswith("(did you mean redact?)")
    assert errors[1] == f"{main}:7:11: unknown-kind: b.kind: 'phrase' (did you mean phrases?)"
    assert "does not compile" in errors[2]
    assert errors[3] == (
        f'{main}:12:9: duplicate-id: policy id "a" is already defined at {main}:2:9'
    )
    assert errors[4] == (
        f"{main}:18:5: duplicate-key: policies.4.action is already defined at {main}:17:5"
    )
    assert errors[5] == (
        f'{other}:2:9: duplicate-id: policy id "c" is already defined at {main}:9:9'
    )
    assert errors[6].endswith("(did you mean enforce?)")


def test_the_last_of_two_keys_wins_once_the_other_errors_are_fixed(tmp_path):
    path = write_policies(
        tmp_path,
        "policies:\n  - id: d\n    kind: phrases\n    action: block\n    action: redact\n"
        "    phrases: [z]\n",
    )
    # a duplicate key is still an error: it never loads silently
    with pytest.raises(ConfigError) as caught:
        load_policies([path])
    assert caught.value.errors == [
        f"{path}:5:5: duplicate-key: policies.0.action is already defined at {path}:4:5"
    ]
    source = load_source(path, keep_duplicates=True)
    assert source.data["policies"][0]["action"] == "redact"


def test_a_replaced_value_leaves_no_positions_behind():
    text = "a:\n  b: {x: 1, y: 2}\n  b: {x: 3}\n"
    source = load_source("f.yaml", text, keep_duplicates=True)
    assert source.data == {"a": {"b": {"x": 3}}}
    assert source.positions[("a", "b", "x")] == (3, 10)
    assert ("a", "b", "y") not in source.positions
    assert [loc for loc, _ in source.duplicates] == [("a", "b")]
    # without keep_duplicates the key is refused, as before
    with pytest.raises(YamlSyntaxError) as caught:
        load_source("f.yaml", text)
    assert caught.value.errors == [
        "f.yaml:3:3: duplicate-key: a.b is already defined at f.yaml:2:3"
    ]


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("action", "redcat", "(did you mean redact?)"),
        ("action", "Block", "(did you mean block?)"),
        ("severity", "hihg", "(did you mean high?)"),
        ("on_error", "alow", "(did you mean allow?)"),
        ("action", "explode", None),
    ],
)
def test_did_you_mean_for_values(tmp_path, field, value, hint):
    path = write_policies(
        tmp_path,
        f"policies:\n  - id: a\n    kind: phrases\n    phrases: [x]\n    {field}: {value}\n",
    )
    [error] = check_files([path])
    assert error.startswith(f"{path}:5:{len(field) + 7}: invalid-value: a.{field}: ")
    if hint is None:
        assert "did you mean" not in error
    else:
        assert error.endswith(hint)


def test_unknown_kind_far_from_any_lists_the_known_ones(tmp_path):
    path = write_policies(tmp_path, "policies:\n  - id: a\n    kind: weather\n")
    [error] = check_files([path])
    assert "did you mean" not in error and "(known: bias, " in error


def test_sorted_by_position_orders_numerically_and_keeps_unplaced_lines_last():
    lines = ["b.yaml:1:1: x", "no position", "a.yaml:10:2: y", "a.yaml:9:30: z", "a.yaml:9:4: w"]
    assert sorted_by_position(lines) == [
        "a.yaml:9:4: w",
        "a.yaml:9:30: z",
        "a.yaml:10:2: y",
        "b.yaml:1:1: x",
        "no position",
    ]


# -- gateway policy test ---------------------------------------------------------

CASES = """\
cases:
  - name: passes
    text: a bad word here
    expect: {action: block, breached: [a]}
  - name: malformed
    txt: oops
    expect: {action: block}
  - name: fails
    text: all fine
    expect: {action: block, breached: [a]}
  - name: twice
    text: x
    text: y
    expect: {action: allow}
  - name: still runs
    text: fine
    expect: {action: allow}
"""


def _case_files(tmp_path: Path, cases: str = CASES) -> Path:
    write_policies(
        tmp_path, "policies:\n  - {id: a, kind: phrases, phrases: [bad word]}\n", "p.yaml"
    )
    path = tmp_path / "p_test.yaml"
    path.write_text(cases, encoding="utf-8")
    return path


def test_a_malformed_case_spoils_only_itself(tmp_path):
    path = _case_files(tmp_path)
    results = run_tests([tmp_path])
    assert [(r.name, r.outcome, r.where) for r in results] == [
        ("passes", "PASS", f"{path}:2:5"),
        ("malformed", "ERROR", f"{path}:5:5"),
        ("fails", "FAIL", f"{path}:8:5"),
        ("twice", "ERROR", f"{path}:11:5"),
        ("still runs", "PASS", f"{path}:15:5"),
    ]
    malformed, twice = results[1].detail.splitlines(), results[3].detail
    assert malformed == [
        f"{path}:5:5: missing-field: cases.1.text: Field required",
        f"{path}:6:5: unknown-field: cases.1.txt (did you mean text?)",
    ]
    assert twice == f"{path}:13:5: duplicate-key: cases.3.text is already defined at {path}:12:5"


def test_an_unknown_top_level_key_is_reported_and_the_cases_still_run(tmp_path):
    path = _case_files(tmp_path, "case: oops\n" + CASES)
    results = run_tests([tmp_path])
    assert (results[0].name, results[0].outcome) == ("<file>", "ERROR")
    assert results[0].detail.startswith(f"{path}:1:1: unknown-field: case (did you mean cases?)")
    assert [r.outcome for r in results[1:]] == ["PASS", "ERROR", "FAIL", "ERROR", "PASS"]


def test_a_file_without_a_list_of_cases_is_one_error(tmp_path):
    path = _case_files(tmp_path, "cases: {name: a}\n")
    [result] = run_tests([tmp_path])
    assert (result.name, result.outcome) == ("<file>", "ERROR")
    assert result.detail.startswith(f"{path}:1:8: invalid-type: cases")


def test_policy_test_cli_prints_each_case_position(tmp_path):
    path = _case_files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "policy", "test", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"PASS  {path}:2:5: passes"
    assert lines[1] == (
        f"ERROR {path}:5:5: malformed -- {path}:5:5: missing-field: cases.1.text: Field required"
    )
    # the case's second problem, indented under it
    assert lines[2] == f"      {path}:6:5: unknown-field: cases.1.txt (did you mean text?)"
    assert lines[3].startswith(f"FAIL  {path}:8:5: fails -- (whole) action allow, expected block")
    assert lines[-1] == "2 passed, 1 failed, 2 errors"


def test_a_section_error_keeps_its_position_beside_a_duplicate_key(tmp_path):
    path = write_policies(
        tmp_path,
        "policies:\n  - id: a\n    kind: phrases\n    phrases: [x]\n    phrases: [y]\n"
        "monitors:\n  - id: scores\n    score: {path: score}\n    rules: {score_drift: {}}\n"
        "    windw: 3\n",
    )
    errors = check_files([path])
    assert [e.split(": ", 2)[:2] for e in errors] == [
        [f"{path}:5:5", "duplicate-key"],
        [f"{path}:10:5", "unknown-field"],
    ]
