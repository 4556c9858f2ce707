"""Policy kind ``stale_retrieval``: age, registry, reload, malformed metadata."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3

import pytest
from pydantic import ValidationError

from gateway.contract.detector import ScanContext
from gateway.contract.kind import BuildContext, Resources
from gateway.detectors.stale_retrieval import (
    StaleRetrievalPolicy,
    build,
    parse_duration,
    parse_timestamp,
)
from gateway.errors import ConfigError, SourceMetadataError

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
REGISTRY = """\
documents:
  - {id: handbook, current_version: "2", status: active}
  - {id: old-pricing, current_version: "1", status: withdrawn}
  - {id: travel, current_version: "7", expires_at: 2026-01-31}
  - {id: launch, current_version: "1", effective_from: 2027-01-01}
  - {id: refunds, current_version: "4", accepted_versions: ["3"]}
"""
ANSWER = "The refund window is 30 days."


def detector(tmp_path, **params):
    if "registry" in params and params["registry"] == "reg.yaml":
        (tmp_path / "reg.yaml").write_text(REGISTRY, encoding="utf-8")
    config = StaleRetrievalPolicy(id="stale", kind="stale_retrieval", **params)
    return build(config, BuildContext(base_dir=tmp_path, resources=Resources(clock=lambda: NOW)))


def judge(det, sources, text=ANSWER, errors=()):
    ctx = ScanContext(sources=sources, source_errors=list(errors))
    return det.start(ctx).feed(text, final=True)


def days_ago(n):
    return (dt.datetime.fromtimestamp(NOW, dt.UTC) - dt.timedelta(days=n)).isoformat()


@pytest.mark.parametrize(
    ("source", "rules"),
    [
        ({"id": "a", "updated_at": days_ago(10)}, []),
        ({"id": "a", "updated_at": days_ago(400)}, ["max_age"]),
        ({"id": "a", "published_at": days_ago(400)}, ["max_age"]),
        # updated_at wins over an old published_at
        ({"id": "a", "updated_at": days_ago(3), "published_at": days_ago(900)}, []),
        ({"id": "a", "updated_at": NOW - 86400 * 500}, ["max_age"]),
        ({"id": "a", "updated_at": (NOW - 86400 * 5) * 1000}, []),  # epoch milliseconds
        ({"id": "a", "updated_at": str(int(NOW - 86400 * 5))}, []),
        ({"id": "a"}, ["undated"]),
        ({"id": "a", "updated_at": "last tuesday"}, ["undated"]),
        ({"id": "handbook", "version": "1", "updated_at": days_ago(1)}, ["superseded"]),
        ({"id": "handbook", "version": "2", "updated_at": days_ago(1)}, []),
        ({"id": "refunds", "version": "3", "updated_at": days_ago(1)}, []),
        ({"id": "old-pricing", "version": "1", "updated_at": days_ago(1)}, ["withdrawn"]),
        ({"id": "travel", "version": "7", "updated_at": days_ago(1)}, ["expired"]),
        ({"id": "launch", "version": "1", "updated_at": days_ago(1)}, ["not_yet_effective"]),
        (
            {"id": "handbook", "version": "1", "updated_at": days_ago(999)},
            ["max_age", "superseded"],
        ),
    ],
)
def test_rules_table(tmp_path, source, rules):
    det = detector(tmp_path, max_age="365d", registry="reg.yaml")
    found = judge(det, [source])
    assert sorted(f.evidence["rule"] for f in found) == sorted(rules)
    for f in found:
        assert f.evidence["source"]["id"] == source["id"]
        assert (f.start, f.end) == (0, len(ANSWER))


@pytest.mark.parametrize(("treat_as", "breach"), [("stale", True), ("fresh", False)])
def test_treat_as(tmp_path, treat_as, breach):
    det = detector(tmp_path, max_age="30d", treat_as=treat_as)
    assert bool(judge(det, [{"id": "x", "updated_at": "not a date"}])) is breach


def test_treat_as_error_raises_a_clear_error(tmp_path):
    det = detector(tmp_path, max_age="30d", treat_as="error")
    with pytest.raises(SourceMetadataError, match="'x'.*unparseable date"):
        judge(det, [{"id": "x", "updated_at": "13/45/2020"}])


def test_malformed_sources_raise_or_breach(tmp_path):
    det = detector(tmp_path, max_age="30d")
    with pytest.raises(SourceMetadataError, match="source 0 is a str"):
        judge(det, ["not an object"])
    with pytest.raises(SourceMetadataError, match="sources\\[1\\]: bad"):
        judge(det, [{"id": "a", "updated_at": days_ago(1)}], errors=["sources[1]: bad"])
    det = detector(tmp_path, max_age="30d", on_malformed="breach")
    found = judge(det, [{"id": "a", "updated_at": days_ago(1)}, 42])
    assert [f.evidence["rule"] for f in found] == ["malformed"]


@pytest.mark.parametrize(
    ("text", "sources", "when", "breach"),
    [
        ("Revenue grew 12% in 2024.", [], "facts", True),
        ("According to the handbook, leave is generous.", [], "facts", True),
        ("Happy to help! What would you like to know?", [], "facts", False),
        ("Happy to help! What would you like to know?", [], "always", True),
        ("Revenue grew 12% in 2024.", [{"id": "r", "updated_at": days_ago(1)}], "facts", False),
    ],
)
def test_min_sources(tmp_path, text, sources, when, breach):
    det = detector(tmp_path, min_sources=1, min_sources_when=when)
    found = judge(det, sources, text=text)
    assert bool(found) is breach
    if breach:
        assert found[0].evidence["rule"] == "min_sources"


def test_streamed_judges_once_and_holds_nothing(tmp_path):
    det = detector(tmp_path, max_age="30d")
    ctx = ScanContext(sources=[{"id": "a", "updated_at": days_ago(90)}])
    scan = det.start(ctx)
    text = "The answer, streamed in pieces."
    first = scan.feed(text[:5], final=False)
    assert [f.evidence["rule"] for f in first] == ["max_age"]
    assert scan.hold_from(text[:5]) == 5
    assert scan.feed(text, final=False) == []
    assert scan.feed(text, final=True) == []


def test_sources_arriving_over_a_stream_are_each_judged_once(tmp_path):
    det = detector(tmp_path, max_age="30d", min_sources=3, min_sources_when="always")
    ctx = ScanContext(sources=[{"id": "a", "updated_at": days_ago(90)}])
    scan = det.start(ctx)
    assert [f.evidence["source"]["id"] for f in scan.feed("Part", final=False)] == ["a"]
    assert scan.feed("Part one", final=False) == []
    ctx.sources.append({"id": "b", "updated_at": days_ago(900)})
    assert [f.evidence["source"]["id"] for f in scan.feed("Part one.", final=False)] == ["b"]
    found = scan.feed("Part one. Two.", final=True)
    assert [f.evidence["rule"] for f in found] == ["min_sources"]
    assert scan.feed("Part one. Two.", final=True) == []


def test_sources_known_only_at_the_end_of_a_stream(tmp_path):
    det = detector(tmp_path, max_age="30d", wait_for_sources=True)
    ctx = ScanContext()
    scan = det.start(ctx)
    assert scan.feed("Partial", final=False) == []
    assert scan.hold_from("Partial") == 0  # waits for the sources
    ctx.sources.append({"id": "a", "updated_at": days_ago(90)})
    found = scan.feed("Partial answer.", final=True)
    assert [f.evidence["rule"] for f in found] == ["max_age"]


def test_no_sources_no_findings(tmp_path):
    det = detector(tmp_path, max_age="30d", registry="reg.yaml")
    assert judge(det, []) == []


def test_unknown_documents(tmp_path):
    det = detector(tmp_path, registry="reg.yaml", unknown_documents="breach")
    found = judge(det, [{"id": "nobody-knows"}])
    assert [f.evidence["rule"] for f in found] == ["unknown_document"]
    det = detector(tmp_path, registry="reg.yaml")
    assert judge(det, [{"id": "nobody-knows"}]) == []


def test_csv_and_sqlite_registries(tmp_path):
    (tmp_path / "reg.csv").write_text(
        "id,current_version,status,effective_from,expires_at\nhandbook,2,active,,\n"
        "gone,1,withdrawn,,\n",
        encoding="utf-8",
    )
    db = tmp_path / "reg.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE docs (id TEXT, current_version TEXT, status TEXT)")
        conn.executemany(
            "INSERT INTO docs VALUES (?, ?, ?)",
            [("handbook", "2", "active"), ("gone", "1", "withdrawn")],
        )
    conn.close()
    for det in (
        detector(tmp_path, registry="reg.csv"),
        detector(tmp_path, registry="reg.sqlite", registry_table="docs"),
    ):
        found = judge(det, [{"id": "handbook", "version": "1"}, {"id": "gone", "version": "1"}])
        assert sorted(f.evidence["rule"] for f in found) == ["superseded", "withdrawn"]


def test_registry_reloads_on_change_and_survives_a_broken_edit(tmp_path):
    det = detector(tmp_path, registry="reg.yaml", reload_interval_s=0)
    src = [{"id": "handbook", "version": "2"}]
    assert judge(det, src) == []
    path = tmp_path / "reg.yaml"
    path.write_text(REGISTRY.replace('current_version: "2"', 'current_version: "3"'), "utf-8")
    os.utime(path, ns=(1, 10**18))  # a clearly different mtime, whatever the clock
    assert [f.evidence["rule"] for f in judge(det, src)] == ["superseded"]
    path.write_text("documents: [oops", encoding="utf-8")
    os.utime(path, ns=(1, 2 * 10**18))
    assert [f.evidence["rule"] for f in judge(det, src)] == ["superseded"]
    assert det.registry.last_error and "reg.yaml" in det.registry.last_error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("documents: {a: 1}\n", "documents"),
        ("documents:\n  - {current_version: 1}\n", "needs an id"),
        ("documents:\n  - {id: a, expires_at: someday}\n", "expires_at"),
    ],
)
def test_bad_registry_is_a_config_error(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        detector(tmp_path, registry="bad.yaml")


@pytest.mark.parametrize("params", [{"max_age": "soon"}, {"max_age": 0}, {"treat_as": "old"}])
def test_config_validation(params):
    with pytest.raises(ValidationError):
        StaleRetrievalPolicy(id="s", kind="stale_retrieval", **params)


@pytest.mark.parametrize(
    ("value", "seconds"), [("90d", 90 * 86400), ("12h", 43200), ("2w", 14 * 86400), (60, 60.0)]
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, None, "", "yesterday", float("nan"), [2020]])
def test_parse_timestamp_rejects(value):
    with pytest.raises(ValueError):
        parse_timestamp(value)


def test_parse_timestamp_forms():
    assert parse_timestamp("2026-06-01T00:00:00Z") == NOW
    assert parse_timestamp("2026-06-01") == NOW
    assert parse_timestamp(dt.date(2026, 6, 1)) == NOW
    assert parse_timestamp(NOW * 1000) == NOW


def test_fact_patterns_must_compile():
    with pytest.raises(ValidationError, match=r"pattern '\[a' does not compile"):
        StaleRetrievalPolicy(id="s", kind="stale_retrieval", fact_patterns=["[a"])
