"""Windowed monitors: replayed decision sequences fire at the right observation."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import yaml

from gateway.errors import ConfigError
from gateway.monitors.windows import (
    MemoryStateStore,
    MonitorSet,
    extract,
    ks,
    parse_monitors,
    psi,
)


def monitors(text: str) -> MonitorSet:
    return MonitorSet(parse_monitors([("test.yaml", yaml.safe_load(text))]))


REJECTIONS = """
- id: credit
  routes: [credit]
  decision: {path: result.decision, reject_values: [rejected]}
  window: 10
  baseline: 20
  rules:
    rejection_rate: {min_rise: 0.4}
"""


def decision(rejected: bool, cohort: str | None = None, score: float | None = None) -> dict:
    body: dict = {"result": {"decision": "rejected" if rejected else "approved"}}
    if cohort is not None:
        body["applicant"] = {"cohort": cohort}
    if score is not None:
        body["result"]["score"] = score
    return body


def test_rejection_rate_fires_at_the_right_window_and_resolves():
    mset = monitors(REJECTIONS)
    events = []
    # 30 observations at a 20% rejection rate fill baseline (20) and window (10)
    for i in range(30):
        events += mset.observe("credit", decision(i % 5 == 0), now=i)
    assert events == []
    # from now on every response is rejected: the window rate climbs 0.2 -> 1.0
    fired_at = None
    for i in range(30, 60):
        evs = mset.observe("credit", decision(True), now=i)
        if evs:
            fired_at = fired_at or i
            events += evs
    fired = [e for e in events if e.state == "fired"]
    assert len(fired) == 1, "a sustained rise is one event, not one per response"
    ev = fired[0]
    assert ev.rule == "rejection_rate" and ev.monitor == "credit"
    # baseline 0.2; at i=30 a rejection replaces a rejection (window stays
    # 0.2), at i=31 it replaces an approval: 0.3 is +50%, past +40%
    assert ev.details["baseline_rate"] == pytest.approx(0.2)
    assert ev.value >= 0.4
    assert fired_at == ev.at == 31
    assert ev.details["window_rate"] == pytest.approx(0.3)
    # back to normal: once the trailing baseline catches up the rule clears,
    # and a normal window against a high baseline never re-fires
    for i in range(60, 120):
        events += mset.observe("credit", decision(i % 5 == 0), now=i)
    assert [e.state for e in events] == ["fired", "resolved"]


def test_other_routes_and_unparseable_bodies_are_skipped():
    mset = monitors(REJECTIONS)
    for i in range(50):
        assert mset.observe("chat", decision(True), now=i) == []
        mset.observe("credit", {"unexpected": "shape"}, now=i)
    mon = mset.monitors["credit"]
    assert mon.count == 0 and mon.skipped == 50


DISPARATE = """
- id: fairness
  decision: {path: result.decision}
  cohort: {path: applicant.cohort}
  window: 100
  baseline: 100
  rules:
    disparate_impact: {min_ratio: 0.8, min_cohort_samples: 20}
"""


def test_disparate_impact_fires_when_a_cohort_falls_below_four_fifths():
    mset = monitors(DISPARATE)
    rng = random.Random(7)
    # both cohorts approved 80% of the time: ratio ~1
    for i in range(100):
        cohort = "a" if i % 2 else "b"
        assert mset.observe("x", decision(i % 5 == 0, cohort), now=i) == []
    # cohort b's approvals drop to 40%: each new b decision lowers its rate
    events = []
    for i in range(100, 200):
        cohort = "a" if i % 2 else "b"
        rejected = (i % 5 == 0) if cohort == "a" else (rng.random() < 0.6)
        events += mset.observe("x", decision(rejected, cohort), now=i)
    fired = [e for e in events if e.state == "fired"]
    assert len(fired) == 1
    ev = fired[0]
    assert ev.details["disadvantaged"] == "b" and ev.details["reference"] == "a"
    rates = ev.details["approval_rates"]
    assert rates["b"] / rates["a"] == pytest.approx(ev.value, abs=1e-3)
    assert ev.value < 0.8
    # the event came when the ratio first crossed: one observation earlier it was above
    assert 100 < ev.observation < 200


def test_small_cohorts_are_not_judged():
    mset = monitors(DISPARATE)
    for i in range(100):
        cohort = "rare" if i < 5 else "common"
        rejected = cohort == "rare"
        assert mset.observe("x", decision(rejected, cohort), now=i) == []


DRIFT = """
- id: drift
  score: {path: result.score}
  window: 100
  baseline: 300
  baseline_mode: fixed
  rules:
    score_drift: {method: psi, threshold: 0.2, every: 1}
- id: drift-ks
  score: {path: result.score}
  window: 100
  baseline: 300
  baseline_mode: fixed
  rules:
    score_drift: {method: ks, threshold: 0.2, every: 1}
"""


def test_score_drift_fires_on_a_shift_and_not_on_noise():
    mset = monitors(DRIFT)
    rng = np.random.default_rng(3)
    events = []
    for i, s in enumerate(rng.normal(0.5, 0.1, 600)):
        events += mset.observe("x", decision(False, score=float(s)), now=i)
    assert events == [], "same distribution: no drift"
    for i, s in enumerate(rng.normal(0.8, 0.1, 100), start=600):
        events += mset.observe("x", decision(False, score=float(s)), now=i)
    assert {(e.monitor, e.state) for e in events} == {("drift", "fired"), ("drift-ks", "fired")}
    assert all(600 < e.observation <= 700 for e in events)


def test_state_survives_a_restart_through_the_store():
    store = MemoryStateStore()
    first = monitors(REJECTIONS)
    for i in range(30):
        first.observe("credit", decision(i % 5 == 0), now=i)
    first.save(store)
    second = monitors(REJECTIONS)
    second.load(store)
    assert second.snapshot() == first.snapshot()
    # the restored monitor fires exactly where the original would
    a = [e.observation for i in range(30, 40) for e in first.observe("credit", decision(True), i)]
    b = [e.observation for i in range(30, 40) for e in second.observe("credit", decision(True), i)]
    assert a == b and a


def test_async_store():
    class AsyncStore(MemoryStateStore):
        async def save_state(self, key, state):
            super().save_state(key, state)

        async def load_state(self, key):
            return super().load_state(key)

    async def go():
        store = AsyncStore()
        mset = monitors(REJECTIONS)
        mset.observe("credit", decision(True), now=0)
        await mset.asave(store)
        other = monitors(REJECTIONS)
        await other.aload(store)
        return other.monitors["credit"].count

    assert asyncio.run(go()) == 1


def test_events_reach_the_callback_and_metrics():
    got = []
    mset = MonitorSet(parse_monitors([("t", yaml.safe_load(REJECTIONS))]), on_event=got.append)
    for i in range(40):
        mset.observe("credit", decision(i >= 30 or i % 5 == 0), now=i)
    assert got and got[0].to_json()["rule"] == "rejection_rate"
    assert mset.events_total[("credit", "rejection_rate", "fired")] == 1
    assert ("credit", "rejection_rate") in mset.gauges()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"id": "m", "rules": {}}], "no rules"),
        ([{"id": "m", "rules": {"disparate_impact": {}}, "decision": {"path": "d"}}], "cohort"),
        ([{"id": "m", "rules": {"score_drift": {}}}], "score"),
        ([{"id": "m", "score": {"path": "s"}, "rules": {"score_drift": {}}, "windw": 3}], "windw"),
        ([{"id": "m", "score": {"path": "a..b"}, "rules": {"score_drift": {}}}], "JSON path"),
    ],
)
def test_config_errors(raw, message):
    with pytest.raises(ConfigError) as exc:
        parse_monitors([("monitors.yaml", raw)])
    assert any(message in e and "monitors.yaml" in e for e in exc.value.errors)


def test_duplicate_ids():
    raw = yaml.safe_load(REJECTIONS)
    with pytest.raises(ConfigError, match="monitors"):
        parse_monitors([("a.yaml", raw), ("b.yaml", raw)])


def test_shipped_monitors_validate():
    from pathlib import Path

    path = Path(__file__).parents[1] / "policies" / "monitors.yaml"
    configs = parse_monitors([(str(path), yaml.safe_load(path.read_text())["monitors"])])
    assert {c.id for c in configs} == {
        "credit-decisions",
        "recommendations-drift",
        "recommendations-click-through",
        "offers-accepted-by-region",
        "policy-labels",
    }


@pytest.mark.parametrize(
    ("path", "value"),
    [("a.b", 1), ("$.a.b", 1), ("list[1].x", "y"), ('a["b"]', 1), ("a.c", None), ("list[5]", None)],
)
def test_extract(path, value):
    body = {"a": {"b": 1}, "list": [{}, {"x": "y"}]}
    got = extract(body, path)
    assert (None if got.__class__ is object else got) == value


def test_psi_and_ks():
    rng = np.random.default_rng(0)
    same = rng.normal(0, 1, 2000)
    assert psi(same[:1000], same[1000:], 10) < 0.05
    assert psi(same[:1000], same[1000:] + 1.0, 10) > 0.2
    assert ks(same[:1000], same[1000:]) < 0.1
    assert ks(same[:1000], same[1000:] + 1.0) > 0.3


def test_monitors_section_from_the_policy_loader():
    from pathlib import Path

    from gateway.policy.loader import load_policies

    policy_set = load_policies([Path(__file__).parents[1] / "policies" / "monitors.yaml"])
    mset = MonitorSet(parse_monitors(policy_set.sections["monitors"]))
    assert {"credit-decisions", "recommendations-drift", "policy-labels"} <= set(mset.monitors)
    body = {"result": {"decision": "declined", "score": 0.3}, "applicant": {"cohort": "a"}}
    assert mset.observe("credit", body, now=0.0) == []
    assert mset.monitors["credit-decisions"].count == 1
    assert mset.monitors["recommendations-drift"].count == 0
