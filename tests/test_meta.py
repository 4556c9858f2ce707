"""Every policy kind is tested, shipped with an example that validates, covered by a
passing policy test case, and documented (Datasette's ``test_plugin_hooks_have_tests``).

The shipped files are checked as the demo runs them: a copy of ``policies/`` with the
sample index built beside it, so the copyright example can load without a built
``indexes/sample`` in the checkout.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.index import BuildParams, build_index
from gateway.policy.kinds import default_registry
from gateway.policy.loader import TEST_SUFFIX, check_files, load_policies, policy_files
from gateway.policy.testing import CaseFile, CaseResult, run_tests
from gateway.policy.testing import test_files as case_files
from gateway.yaml_source import load_source

ROOT = Path(__file__).resolve().parents[1]
KINDS = default_registry().names()


def test_the_registry_has_the_built_in_kinds():
    # the parametrized checks below prove nothing over an empty list
    assert set(KINDS) >= {
        "bias",
        "copyright",
        "length",
        "phrases",
        "retrieval_quality",
        "stale_retrieval",
    }


# -- a test module per kind ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_kind_has_a_test_module(kind):
    module = ROOT / "tests" / f"test_{kind}.py"
    assert module.is_file(), f"no tests/test_{kind}.py for policy kind {kind!r}"
    text = module.read_text(encoding="utf-8")
    # it is about this kind: it uses its detector module or writes a policy of the kind
    assert f"gateway.detectors.{kind}" in text or re.search(
        rf"""kind["']?\s*[:=]\s*["']?{re.escape(kind)}\b""", text
    ), f"tests/test_{kind}.py never uses the {kind!r} kind"
    assert re.search(r"^(async )?def test_", text, re.MULTILINE)


# -- shipped examples, validated, with passing cases -----------------------------------------------
@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A copy of policies/ with the sample index built beside it, as the demo does."""
    base = tmp_path_factory.mktemp("meta")
    shutil.copytree(ROOT / "policies", base / "policies")
    # the shipped copyright policy matches lexically, so the lexical layer suffices here
    build_index(
        ROOT / "indexes" / "sample" / "corpus.jsonl",
        base / "indexes" / "sample",
        BuildParams(semantic=False),
    )
    return base / "policies"


def examples(directory: Path) -> dict[str, list[Path]]:
    """Kind -> the shipped policy files with a policy of that kind."""
    import yaml

    out: dict[str, list[Path]] = {}
    for path in policy_files([directory]):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for policy in data.get("policies") or []:
            out.setdefault(policy.get("kind"), []).append(path)
    return out


@pytest.mark.slow
def test_every_shipped_policy_file_validates(shipped):
    assert check_files([shipped]) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_kind_has_a_shipped_example_that_validates(kind, shipped):
    files = examples(shipped).get(kind, [])
    assert files, f"policies/ ships no example of kind {kind!r}"
    for path in files:
        # on its own, too: an example must not lean on another file
        assert check_files([path]) == [], f"policies/{path.name} does not validate"


@dataclass
class Coverage:
    """For each kind: the cases that run a policy of it, and those where one breaches."""

    results: list[CaseResult]
    runs: dict[str, list[CaseResult]]
    breaches: dict[str, list[CaseResult]]


@pytest.fixture(scope="module")
def coverage(shipped) -> Coverage:
    results = run_tests([shipped])
    by_case = {(Path(r.file).name, r.name): r for r in results}
    runs: dict[str, list[CaseResult]] = {}
    breaches: dict[str, list[CaseResult]] = {}
    for test_path in case_files([shipped]):
        spec = CaseFile.model_validate(load_source(test_path).data)
        if spec.policies:
            paths = [test_path.parent / p for p in spec.policies]
        else:
            stem = test_path.stem[: -len(TEST_SUFFIX)]
            paths = [test_path.with_name(stem + test_path.suffix)]
        policy_set = load_policies(paths)
        for case in spec.cases:
            result = by_case[(test_path.name, case.name)]
            applied = policy_set.for_route(case.route)
            kind_of = {p.config.id: p.config.kind for p in applied}
            for kind in set(kind_of.values()):
                runs.setdefault(kind, []).append(result)
            for policy_id in case.expect.breached:
                if policy_id in kind_of:
                    breaches.setdefault(kind_of[policy_id], []).append(result)
    return Coverage(results, runs, breaches)


@pytest.mark.slow
def test_every_shipped_policy_case_passes(coverage):
    assert len(coverage.results) >= 30
    # every shipped case file is read, none skipped by a name mismatch
    files = {Path(r.file).name for r in coverage.results}
    shipped_cases = {p.name for p in (ROOT / "policies").glob("*_test.yaml")}
    assert files == shipped_cases
    failures = [
        f"{r.outcome} {Path(r.file).name}: {r.name}: {r.detail}"
        for r in coverage.results
        if r.outcome != "PASS"
    ]
    assert failures == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_run_by_a_passing_policy_case(kind, coverage):
    cases = coverage.runs.get(kind, [])
    assert cases, f"no case in policies/*_test.yaml runs a policy of kind {kind!r}"
    assert any(r.outcome == "PASS" for r in cases), [f"{r.name}: {r.detail}" for r in cases]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_kind_breaches_in_a_passing_policy_case(kind, coverage):
    # a kind whose shipped policy never fires in any case shows nothing about it
    cases = coverage.breaches.get(kind, [])
    assert cases, f"no case in policies/*_test.yaml expects a {kind!r} policy to breach"
    assert any(r.outcome == "PASS" for r in cases), [f"{r.name}: {r.detail}" for r in cases]


# -- docs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_kind_has_a_docs_section(kind):
    heading = re.compile(rf"^#+ .*`{re.escape(kind)}`", re.MULTILINE)
    docs = [p for p in (ROOT / "docs").glob("*.md") if heading.search(p.read_text())]
    assert docs, f"no docs/*.md heading names the kind `{kind}`"


# -- registration ----------------------------------------------------------------------------------
def test_every_kind_registers_like_a_plugin():
    for kind in KINDS:
        entry = default_registry().get(kind)
        assert entry.name == kind
        assert entry.config.model_fields["kind"].annotation.__args__ == (kind,)
        assert entry.config.model_config.get("extra") == "forbid"
