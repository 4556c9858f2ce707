"""Outcome feedback: the API, its store table, and the outcome rules of the monitors."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import yaml
from aiohttp import web

from gateway.admin import create_admin_app
from gateway.app import GATEWAY, build_gateway, create_app
from gateway.config import Route, Settings, Store
from gateway.errors import ConfigError
from gateway.monitors.subsystem import Monitors
from gateway.monitors.windows import (
    AGREE,
    FALSE_POSITIVE,
    MISS,
    MemoryStateStore,
    MonitorSet,
    Outcome,
    parse_monitors,
)
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, incidents_of, write_policies

FEEDBACK_TOKEN = "test-feedback-token"


def monitors(text: str) -> MonitorSet:
    return MonitorSet(parse_monitors([("test.yaml", yaml.safe_load(text))]))


def hits(rate: float, n: int, start: int = 0) -> list[bool]:
    """``n`` outcomes at exactly ``rate``, spread evenly (a click stream without noise)."""
    return [
        math.floor((i + 1) * rate + 1e-9) > math.floor(i * rate + 1e-9)
        for i in range(start, start + n)
    ]


CTR = """
- id: ctr
  routes: [recommend]
  outcome: {type: click}
  window: 100
  baseline: 500
  rules:
    outcome_rate: {min_drop: 0.1}
"""


def replay(mset: MonitorSet, stream: list[bool], route: str = "recommend") -> list:
    events = []
    for i, clicked in enumerate(stream):
        events += mset.feed(route, Outcome(type="click", value=clicked), now=float(i))
    return events


def test_click_through_falling_15_percent_fires_once_and_5_percent_does_not():
    mset = monitors(CTR)
    events = replay(mset, hits(0.20, 600) + hits(0.17, 300))
    fired = [e for e in events if e.state == "fired"]
    assert len(fired) == 1 and fired[0].rule == "outcome_rate"
    details = fired[0].details
    assert details["baseline_rate"] == 0.2 and details["direction"] == "drop"
    assert 0.17 <= details["window_rate"] <= 0.18
    assert fired[0].value >= 0.1 and fired[0].threshold == 0.1
    # a fall of 5% stays under the rule's 10%
    calm = monitors(CTR)
    assert replay(calm, hits(0.20, 600) + hits(0.19, 600)) == []
    assert calm.monitors["ctr"].count == 1200


def test_outcome_rate_needs_a_full_window_and_baseline_and_ignores_other_routes():
    mset = monitors(CTR)
    # a collapse before the baseline is there judges nothing
    assert replay(mset, [False] * 550) == []
    other = monitors(CTR)
    assert replay(other, hits(0.2, 600) + [False] * 200, route="search") == []
    assert other.monitors["ctr"].count == 0


def test_thumbs_down_rising_fires_and_resolves():
    mset = monitors(
        """
- id: complaints
  outcome: {type: thumbs_down}
  window: 50
  baseline: 200
  rules:
    outcome_rate: {min_rise: 0.5}
"""
    )
    events = []
    stream = hits(0.1, 250) + hits(0.3, 100) + hits(0.1, 600)
    for i, down in enumerate(stream):
        events += mset.feed("any", Outcome(type="thumbs_down", value=down), float(i))
    assert [e.state for e in events] == ["fired", "resolved"]
    assert events[0].details["direction"] == "rise"


def test_outcome_rate_per_cohort():
    mset = monitors(
        """
- id: acceptance-by-region
  outcome: {type: acceptance, cohort: {attribute: region}}
  window: 200
  rules:
    outcome_cohorts: {min_ratio: 0.8, min_cohort_samples: 30}
"""
    )
    events = []
    north, south = hits(0.6, 100), hits(0.3, 100)
    for i in range(100):
        for region, stream in (("north", north), ("south", south)):
            ev = Outcome(type="acceptance", value=stream[i], cohort={"region": region})
            events += mset.feed("loans", ev, float(i))
    assert len(events) == 1 and events[0].rule == "outcome_cohorts"
    assert events[0].details["lowest"] == "south" and events[0].details["reference"] == "north"
    assert events[0].value == pytest.approx(0.5)


def test_cohort_from_the_decision_record():
    mset = monitors(
        """
- id: ctr-by-model
  outcome: {type: click, cohort: {decision: model}}
  window: 40
  rules:
    outcome_cohorts: {min_ratio: 0.8, min_cohort_samples: 10}
"""
    )
    events = []
    for i in range(40):
        model = "m-new" if i % 2 else "m-old"
        clicked = (i % 4 == 1) if model == "m-new" else True
        ev = Outcome(type="click", value=clicked, record={"model": model})
        events += mset.feed("rec", ev, float(i))
    assert len(events) == 1 and events[0].details["lowest"] == "m-new"
    assert events[0].details["rates"] == {"m-new": 0.5, "m-old": 1.0}


def test_label_disagreement_counts_false_positives_and_misses_per_policy():
    mset = monitors(
        """
- id: labels
  outcome: {type: label}
  window: 100
  rules:
    label_disagreement: {policies: ["copyright-*"], max_rate: 0.2, min_samples: 20}
"""
    )
    events = []
    verdicts = [AGREE] * 8 + [FALSE_POSITIVE, MISS]  # 20% disagree: at the limit, not past it
    for i in range(30):
        ev = Outcome(type="label", value=True, policy="copyright-books", verdict=verdicts[i % 10])
        events += mset.feed("chat", ev, float(i))
    # labels of a policy the rule does not watch, and unjudged ones, are not counted
    events += mset.feed("chat", Outcome("label", True, policy="bias", verdict=MISS), 31.0)
    events += mset.feed("chat", Outcome("label", True, policy="copyright-x", verdict=None), 32.0)
    assert events == []
    assert mset.monitors["labels"].skipped == 2
    for i in range(10):
        ev = Outcome(type="label", value=True, policy="copyright-books", verdict=FALSE_POSITIVE)
        events += mset.feed("chat", ev, 40.0 + i)
    assert len(events) == 1 and events[0].rule == "label_disagreement"
    # it fires at the first label past 20%: 31 labels, 3 misses and 4 false positives
    figures = events[0].details["policies"]["copyright-books"]
    assert events[0].details["policy"] == "copyright-books"
    assert figures == {"labels": 31, "false_positives": 4, "misses": 3, "disagreement": 0.2258}
    assert events[0].value == pytest.approx(7 / 31)


def test_outcome_windows_survive_a_restart_and_keep_firing_state():
    mset = monitors(CTR)
    replay(mset, hits(0.20, 600) + hits(0.17, 100))
    assert mset.monitors["ctr"].firing["outcome_rate"]
    state = MemoryStateStore()
    mset.save(state)
    again = monitors(CTR)
    again.load(state)
    mon = again.monitors["ctr"]
    assert mon.count == 700 and len(mon.window) == 100 and mon.firing["outcome_rate"]
    # it is still firing: more of the same raises nothing new
    assert replay(again, hits(0.17, 20)) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"id": "m", "outcome": {"type": "click"}, "rules": {"outcome_rate": {}}}, "exactly one"),
        ({"id": "m", "rules": {"outcome_rate": {"min_drop": 0.1}}}, "need an outcome"),
        (
            {"id": "m", "outcome": {"type": "label"}, "rules": {"outcome_rate": {"min_drop": 0.1}}},
            "label_disagreement",
        ),
        (
            {"id": "m", "outcome": {"type": "click"}, "rules": {"label_disagreement": {}}},
            "outcome type label",
        ),
        (
            {"id": "m", "outcome": {"type": "click"}, "rules": {"outcome_cohorts": {}}},
            "outcome.cohort",
        ),
        (
            {
                "id": "m",
                "outcome": {"type": "click"},
                "score": {"path": "s"},
                "rules": {"outcome_rate": {"min_drop": 0.1}, "score_drift": {}},
            },
            "another monitor",
        ),
        (
            {"id": "m", "outcome": {"type": "clicks"}, "rules": {"outcome_rate": {"min_drop": 1}}},
            "click",
        ),
        (
            {
                "id": "m",
                "outcome": {"type": "click", "cohort": {"attribute": "a", "decision": "b"}},
                "rules": {"outcome_cohorts": {}},
            },
            "exactly one of attribute or decision",
        ),
    ],
)
def test_outcome_config_errors(tmp_path, raw, message):
    path = write_policies(tmp_path, yaml.safe_dump({"monitors": [raw]}), "monitors.yaml")
    with pytest.raises(ConfigError) as exc:
        parse_monitors([(str(path), [raw])])
    assert any(message in e and "monitors.yaml:" in e for e in exc.value.errors), exc.value.errors


# -- through the running gateway, over HTTP ---------------------------------------------------

POLICIES = """\
policies:
  - {id: no-spoilers, kind: phrases, phrases: [the butler did it], action: annotate}
monitors:
  - id: ctr
    routes: [recommend]
    outcome: {type: click}
    window: 100
    baseline: 500
    rules:
      outcome_rate: {min_drop: 0.1}
  - id: spoiler-labels
    outcome: {type: label}
    window: 50
    rules:
      label_disagreement: {policies: [no-spoilers], max_rate: 0.25, min_samples: 8}
incident_rules:
  - id: outcomes
    source: monitor
    monitors: [ctr, spoiler-labels]
    severity: SEV3
"""


@pytest.fixture
async def recommender(aiohttp_server):
    """A recommendation endpoint; a query containing 'spoil' gets the spoiler answer."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        text = "the butler did it" if "spoil" in body.get("query", "") else "try this film"
        return web.json_response({"result": {"answer": text, "items": [{"id": "f1"}]}})

    app = web.Application()
    app.router.add_post("/rag/answer", answer)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def start_gateway(store_url, aiohttp_client, tmp_path, recommender):
    async def start(data: str = "data"):
        policy_dir = tmp_path / "policies"
        write_policies(policy_dir, POLICIES)
        settings = Settings(
            routes=[
                Route(
                    name="recommend",
                    upstream=recommender,
                    protocol="rag-json",
                    path_prefix="/rag/",
                    rag={"text_path": "result.answer"},
                )
            ],
            policies=[str(policy_dir)],
            store=Store(url=store_url),
            data_dir=str(tmp_path / data),
            auth={
                "tokens": [
                    {"name": "root", "token": ADMIN_TOKEN, "roles": ["admin"]},
                    {"name": "rita", "token": REVIEWER_TOKEN, "roles": ["reviewer"]},
                    {"name": "shop", "token": FEEDBACK_TOKEN, "roles": ["feedback"]},
                ]
            },
        )
        app = create_app(build_gateway(settings))
        proxy = await aiohttp_client(app)
        admin = await aiohttp_client(create_admin_app(app[GATEWAY]))
        return proxy, admin, app[GATEWAY]

    return start


async def settle_monitors(gw) -> None:
    """On PostgreSQL the leader applies every process's observations: wait for it."""
    if gw.leadership is None:
        return
    for _ in range(200):
        if gw.leadership.leader:
            break
        await asyncio.sleep(0.05)
    assert gw.leadership.leader
    await gw.subsystem(Monitors).share()


SHOP = {"authorization": f"Bearer {FEEDBACK_TOKEN}"}
ROOT = {"authorization": f"Bearer {ADMIN_TOKEN}"}
RITA = {"authorization": f"Bearer {REVIEWER_TOKEN}"}


async def decide(proxy, n: int, query: str = "something to watch") -> list[str]:
    ids = []
    for _ in range(n):
        resp = await proxy.post("/rag/answer", json={"query": query})
        assert resp.status == 200
        await resp.read()
        ids.append(resp.headers["x-governance-decision-id"])
    return ids


def clicks(ids: list[str], stream: list[bool], prefix: str = "ev") -> list[dict]:
    return [
        {"event_id": f"{prefix}-{d}", "decision_id": d, "type": "click", "value": v}
        for d, v in zip(ids, stream, strict=True)
    ]


async def post_batch(admin, events: list[dict], headers=SHOP) -> dict:
    resp = await admin.post(
        "/governance/v1/feedback/batch", json={"events": events}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_a_click_stream_falling_15_percent_raises_one_incident(start_gateway):
    proxy, admin, gw = await start_gateway()
    ids = await decide(proxy, 800)
    stream = hits(0.20, 600) + hits(0.17, 200)
    events = clicks(ids, stream)
    # the baseline in batches, one event alone, then the fall
    for i in range(0, 599, 100):
        body = await post_batch(admin, events[i : min(i + 100, 599)])
        assert body["duplicates"] == 0
    one = await admin.post("/governance/v1/feedback", json=events[599], headers=SHOP)
    assert one.status == 200
    assert await one.json() == {
        "event_id": events[599]["event_id"],
        "status": "accepted",
        "decision_found": True,
    }
    # a client that lost its answers sends a batch again, plus one event twice in a batch
    again = await post_batch(admin, events[500:600] + events[600:650] + [events[600]])
    assert again["duplicates"] == 101 and again["accepted"] == 50
    assert [r["status"] for r in again["results"][-2:]] == ["accepted", "duplicate"]
    assert all(r["decision_found"] for r in again["results"])
    await post_batch(admin, events[650:])
    # everything once: 800 rows, 800 observations
    row = await gw.store.fetchone("SELECT COUNT(*) AS n FROM feedback_events")
    assert row["n"] == 800
    await settle_monitors(gw)
    mon = gw.subsystem(Monitors).set.monitors["ctr"]
    assert mon.count == 800
    incidents = incidents_of(gw)
    await incidents.settle()
    listed = await (await admin.get("/governance/v1/incidents", headers=ROOT)).json()
    opened = [i for i in listed["incidents"] if i["source"] == "monitor"]
    assert len(opened) == 1, opened
    detail = await incidents.detail(opened[0]["id"])
    assert "ctr" in opened[0]["title"] and "outcome_rate" in opened[0]["title"]
    assert opened[0]["route"] == "recommend"
    fired = detail["monitor"]
    assert fired["monitor"] == "ctr" and fired["rule"] == "outcome_rate"
    assert fired["threshold"] == 0.1 and fired["value"] >= 0.1
    figures = fired["details"]
    assert figures["baseline_rate"] == 0.2 and 0.17 <= figures["window_rate"] <= 0.18
    assert figures["window_events"] == 100 and figures["outcome"] == "click"
    # the rule's state and the feedback counters are visible to operators
    status = await (await admin.get("/governance/v1/monitors", headers=RITA)).json()
    ctr = next(m for m in status["monitors"] if m["id"] == "ctr")
    assert ctr["firing"] == {"outcome_rate": True} and ctr["observations"] == 800
    metrics = await (await admin.get("/metrics")).text()
    assert 'gateway_feedback_events_total{status="accepted",type="click"} 800.0' in metrics
    assert 'gateway_feedback_events_total{status="duplicate",type="click"} 101.0' in metrics


async def test_labels_judge_a_policy_and_the_report_counts_per_week(start_gateway):
    proxy, admin, gw = await start_gateway()
    spoilers = await decide(proxy, 10, "spoil the ending")  # the policy breached
    plain = await decide(proxy, 10)  # the policy passed
    labels = []
    for i, d in enumerate(spoilers):
        # 7 of the breaches were right, 3 were not spoilers after all
        labels.append((d, i < 7))
    for i, d in enumerate(plain):
        # 8 passes were right, 2 answers spoiled the ending in words the policy missed
        labels.append((d, i >= 8))
    events = [
        {
            "event_id": f"lab-{n}",
            "decision_id": d,
            "type": "label",
            "at": "2026-11-23T10:00:00" if n < 10 else 1795000000 + n,
            "label": {"policy": "no-spoilers", "should_breach": should},
        }
        for n, (d, should) in enumerate(labels)
    ]
    body = await post_batch(admin, events)
    assert body["accepted"] == 20
    await settle_monitors(gw)
    monitor = gw.subsystem(Monitors).set.monitors["spoiler-labels"]
    # 3 false positives in the first 10 labels (30%) fire; the 8 right passes after them
    # bring it to 17%, not yet back to half the limit, and 2 misses leave 5 of 20 (25%)
    await settle_monitors(gw)
    mset = gw.subsystem(Monitors).set
    assert mset.events_total[("spoiler-labels", "label_disagreement", "fired")] == 1
    assert mset.events_total[("spoiler-labels", "label_disagreement", "resolved")] == 0
    assert monitor.last_values["label_disagreement"] == pytest.approx(5 / 20)
    report = await admin.get("/governance/v1/feedback/labels?weeks=104", headers=RITA)
    assert report.status == 200
    weeks = (await report.json())["weeks"]
    total = {k: sum(w[k] for w in weeks) for k in ("labels", "agree", "false_positives", "misses")}
    assert total == {"labels": 20, "agree": 15, "false_positives": 3, "misses": 2}
    first = next(w for w in weeks if w["week"] == "2026-W48")
    assert first["policy"] == "no-spoilers" and first["labels"] == 10
    assert first["false_positives"] == 3 and first["disagreement"] == 0.3
    # a label that came before its decision record is judged once the record is stored
    late = {
        "event_id": "lab-late",
        "decision_id": "f" * 32,
        "type": "label",
        "label": {"policy": "no-spoilers", "should_breach": False},
    }
    resp = await admin.post("/governance/v1/feedback", json=late, headers=SHOP)
    assert (await resp.json())["decision_found"] is False
    record = await gw.store.get_decision(spoilers[0])
    record["decision_id"] = "f" * 32
    await gw.store.execute(
        "INSERT INTO decisions (id, ts, route, model, action, revision, record) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        "f" * 32,
        record["ts"],
        record["route"],
        record["model"],
        record["action"],
        record["revision"],
        json.dumps(record),
    )
    report = await admin.get("/governance/v1/feedback/labels?weeks=104", headers=RITA)
    weeks = (await report.json())["weeks"]
    assert sum(w["false_positives"] for w in weeks) == 4
    row = await gw.store.fetchone(
        "SELECT decision_found, verdict FROM feedback_events WHERE event_id = ?", "lab-late"
    )
    assert row == {"decision_found": 1, "verdict": "false_positive"}
    bad = await admin.get("/governance/v1/feedback/labels?weeks=0", headers=RITA)
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid-request"


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_feedback_to_any_replica_reaches_the_leaders_windows(start_gateway):
    first, second = await start_gateway("data-a"), await start_gateway("data-b")
    for _ in range(200):
        if first[2].leadership.leader or second[2].leadership.leader:
            break
        await asyncio.sleep(0.05)
    leader, follower = (first, second) if first[2].leadership.leader else (second, first)
    assert not follower[2].leadership.leader
    ids = await decide(follower[0], 40)
    events = clicks(ids, hits(0.5, 40))
    # half the events reach each replica, and ten are retried through the other one
    to_follower = await post_batch(follower[1], events[:20] + events[30:40])
    to_leader = await post_batch(leader[1], events[20:40])
    assert to_follower["accepted"] == 30 and to_leader == {
        "accepted": 10,
        "duplicates": 10,
        "results": to_leader["results"],
    }
    await follower[2].subsystem(Monitors).share()  # the follower hands its observations over
    await leader[2].subsystem(Monitors).share()  # and the leader applies them
    assert leader[2].subsystem(Monitors).set.monitors["ctr"].count == 40
    assert follower[2].subsystem(Monitors).set.monitors["ctr"].count == 0


async def test_unknown_decisions_are_accepted_and_marked(start_gateway):
    _, admin, gw = await start_gateway()
    resp = await admin.post(
        "/governance/v1/feedback",
        json={"event_id": "x1", "decision_id": "no-such-decision", "type": "click"},
        headers=SHOP,
    )
    assert resp.status == 200
    assert (await resp.json())["decision_found"] is False
    row = await gw.store.fetchone(
        "SELECT decision_found, route, received_by FROM feedback_events WHERE event_id = ?", "x1"
    )
    assert row == {"decision_found": 0, "route": None, "received_by": "shop"}
    # the click monitor watches one route: a click it cannot place is not counted
    await settle_monitors(gw)
    assert gw.subsystem(Monitors).set.monitors["ctr"].count == 0


async def test_feedback_needs_the_feedback_role_and_grants_nothing_else(start_gateway):
    _, admin, _ = await start_gateway()
    event = {"event_id": "a1", "decision_id": "d1", "type": "click"}
    none = await admin.post("/governance/v1/feedback", json=event)
    assert none.status == 401 and (await none.json())["error"]["code"] == "unauthorized"
    reviewer = await admin.post("/governance/v1/feedback", json=event, headers=RITA)
    assert reviewer.status == 403 and (await reviewer.json())["error"]["code"] == "forbidden"
    # the client key reads nothing: not reviews, not monitors, not the label report
    for path in (
        "/governance/v1/reviews",
        "/governance/v1/monitors",
        "/governance/v1/feedback/labels",
    ):
        denied = await admin.get(path, headers=SHOP)
        assert denied.status == 403, path
    assert (await admin.post("/governance/v1/feedback", json=event, headers=SHOP)).status == 200
    # an admin may send feedback too (for a backfill)
    event["event_id"] = "a2"
    assert (await admin.post("/governance/v1/feedback", json=event, headers=ROOT)).status == 200
    doc = await (await admin.get("/governance/v1/openapi.json", headers=RITA)).json()
    assert doc["paths"]["/governance/v1/feedback"]["post"]["x-required-role"] == "feedback"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("", {"decision_id": "d", "type": "click"}, "event_id: Field required"),
        ("", {"event_id": "e", "decision_id": "d", "type": "view"}, "type: Input should be"),
        ("", {"event_id": "e", "decision_id": "d", "type": "label"}, "needs label"),
        (
            "",
            {
                "event_id": "e",
                "decision_id": "d",
                "type": "click",
                "label": {"policy": "p", "should_breach": True},
            },
            "takes no label",
        ),
        ("", {"event_id": "e", "decision_id": "d", "type": "click", "valu": True}, "valu: Extra"),
        ("", {"event_id": "has space", "decision_id": "d", "type": "click"}, "event_id: String"),
        (
            "",
            {"event_id": "e", "decision_id": "d", "type": "click", "at": "yesterday"},
            "at: Input",
        ),
        ("", {"event_id": "e", "decision_id": "d", "type": "click", "value": "maybe"}, "value:"),
        ("/batch", {"events": []}, "events: List should have at least 1 item"),
        (
            "/batch",
            {
                "events": [
                    {"event_id": "e", "decision_id": "d", "type": "click"},
                    {"event_id": "f", "type": "click"},
                ]
            },
            "events[1].decision_id: Field required",
        ),
        (
            "/batch",
            {
                "events": [
                    {"event_id": "e", "decision_id": "d", "type": "label", "label": {"policy": "p"}}
                ]
            },
            "events[0].label.should_breach: Field required",
        ),
    ],
)
async def test_bad_bodies_get_precise_errors_and_store_nothing(start_gateway, path, body, message):
    _, admin, gw = await start_gateway()
    resp = await admin.post(f"/governance/v1/feedback{path}", json=body, headers=SHOP)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid-request" and message in error["message"], error
    row = await gw.store.fetchone("SELECT COUNT(*) AS n FROM feedback_events")
    assert row["n"] == 0


async def test_not_json_and_an_oversized_batch(start_gateway):
    _, admin, _ = await start_gateway()
    resp = await admin.post("/governance/v1/feedback", data=b"{not json", headers=SHOP)
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]
    events = [{"event_id": f"e{i}", "decision_id": "d", "type": "click"} for i in range(1001)]
    resp = await admin.post("/governance/v1/feedback/batch", json={"events": events}, headers=SHOP)
    assert resp.status == 400
    assert "at most 1000 items" in (await resp.json())["error"]["message"]


async def test_the_shipped_outcome_monitors_validate():
    from pathlib import Path

    path = Path(__file__).parents[1] / "policies" / "monitors.yaml"
    configs = parse_monitors([(str(path), yaml.safe_load(path.read_text())["monitors"])])
    outcome = {c.id: c for c in configs if c.outcome is not None}
    assert outcome and all(c.rules.outcome_rules() for c in outcome.values())
