"""Every fuzz target runs for a few seconds with no crash; the runner itself catches crashes.

``python -m fuzz --seconds 60`` runs the same targets for longer (docs/testing.md).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.runner import Target, discover, run_target, select

TARGETS = discover()
SECONDS = float(os.environ.get("GATEWAY_FUZZ_SECONDS", "5"))
# a fixed seed keeps CI repeatable; set GATEWAY_FUZZ_SEED to explore elsewhere
SEED = int(os.environ.get("GATEWAY_FUZZ_SEED", "0"))


def test_the_yaml_targets_are_discovered():
    names = {t.name for t in TARGETS}
    assert {
        "yaml.fuzz_load_source_text",
        "yaml.fuzz_load_source_bytes",
        "yaml.fuzz_policy_file",
        "yaml.fuzz_policy_documents",
        "yaml.fuzz_config",
        "yaml.fuzz_source_registry",
    } <= names
    assert [t.name for t in select(TARGETS, "fuzz_config")] == ["yaml.fuzz_config"]
    assert len(select(TARGETS, "yaml")) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_fuzz_target_finds_no_crash(target):
    report = run_target(target, SECONDS, seed=SEED)
    assert report.crash is None, (
        f"{target.name} crashed on input {report.crash.input}\n"
        f"{report.crash.error}\n{report.crash.traceback}"
    )
    # the inputs reached the code under test, not only Hypothesis' rejections
    assert report.valid > 0


@settings(database=None)
@given(text=st.text(alphabet="ab\x07", min_size=1))
def fuzz_fails_on_a_bell(text: str) -> None:
    if "\x07" in text:
        raise ValueError("a bell")


def test_the_runner_reports_a_crash_with_its_input():
    report = run_target(Target("self.bell", fuzz_fails_on_a_bell), 30, seed=1)
    assert report.crash is not None
    assert report.crash.error == "ValueError: a bell"
    assert report.crash.input.startswith("text=") and "\\x07" in report.crash.input
    assert report.iterations >= 1
