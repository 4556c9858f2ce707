"""Every shipped policy validates and passes its own test cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.index import BuildParams, build_index
from gateway.policy.loader import check_files
from gateway.policy.testing import run_tests

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A copy of policies/ with the sample index built beside it, as the demo does."""
    base = tmp_path_factory.mktemp("shipped")
    shutil.copytree(ROOT / "policies", base / "policies")
    # the shipped copyright policy matches lexically, so the lexical layer suffices here
    build_index(
        ROOT / "indexes" / "sample" / "corpus.jsonl",
        base / "indexes" / "sample",
        BuildParams(semantic=False),
    )
    return base / "policies"


@pytest.mark.slow
def test_shipped_policies_validate(shipped):
    assert check_files([shipped]) == []


@pytest.mark.slow
def test_shipped_policy_cases_all_pass(shipped):
    results = run_tests([shipped])
    files = {Path(r.file).name for r in results}
    assert files >= {
        "main_test.yaml",
        "copyright_test.yaml",
        "bias_test.yaml",
        "retrieval_test.yaml",
    }
    failures = [
        f"{r.outcome} {Path(r.file).name}: {r.name}: {r.detail}"
        for r in results
        if r.outcome != "PASS"
    ]
    assert failures == []
