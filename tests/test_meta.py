"""Every policy kind is tested, shipped with an example, and documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.policy.kinds import default_registry
from gateway.policy.loader import policy_files

ROOT = Path(__file__).resolve().parents[1]
KINDS = default_registry().names()


@pytest.mark.parametrize("kind", KINDS)
def test_kind_has_a_test_module(kind):
    stem = kind.split("_")[0]
    modules = [p.name for p in (ROOT / "tests").glob("test_*.py")]
    assert any(m.startswith((f"test_{kind}", f"test_{stem}")) for m in modules), (
        f"no tests/test_{kind}*.py for policy kind {kind!r}"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_kind_has_a_shipped_example(kind):
    import yaml

    found = []
    for path in policy_files([ROOT / "policies"]):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        found += [p for p in data.get("policies", []) if p.get("kind") == kind]
    assert found, f"policies/ ships no example of kind {kind!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_kind_has_a_docs_section(kind):
    heading = re.compile(rf"^#+ .*`{re.escape(kind)}`", re.MULTILINE)
    docs = [p for p in (ROOT / "docs").glob("*.md") if heading.search(p.read_text())]
    assert docs, f"no docs/*.md heading names the kind `{kind}`"


def test_every_kind_registers_like_a_plugin():
    for kind in KINDS:
        entry = default_registry().get(kind)
        assert entry.name == kind
        assert entry.config.model_fields["kind"].annotation.__args__ == (kind,)
        assert entry.config.model_config.get("extra") == "forbid"
