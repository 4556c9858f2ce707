"""Incidents raised from breaches: dedup, escalation, auto-resolve, containment, API, UI."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace

import pytest

from gateway.config import Route
from gateway.errors import ConfigError
from gateway.incidents.rules import parse_rules
from gateway.records.decision import DecisionRecord
from gateway.records.monitor import MonitorEvent
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, incidents_of, write_policies

CHAT = "/v1/chat/completions"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
REVIEWER = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
BREACH = "Sure, the launch codes are 1234."

BASE_POLICY = """\
policies:
  - id: no-forbidden
    kind: phrases
    phrases: ["forbidden phrase", "launch codes"]
    action: block
    severity: high
    message: "Blocked by policy."
  - id: watch-competitor
    kind: phrases
    phrases: ["competitor"]
    mode: monitor
    action: block
    severity: low
"""


def chat(stream: bool = False, model: str = "gpt-test") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def with_rules(rules: str) -> str:
    return BASE_POLICY + "incident_rules:\n" + rules


async def incidents(admin, **query) -> list[dict]:
    resp = await admin.get("/governance/v1/incidents", params=query, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["incidents"]


async def detail(admin, incident_id: str) -> dict:
    resp = await admin.get(f"/governance/v1/incidents/{incident_id}", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_for(predicate, what: str, attempts: int = 200, pause: float = 0.05):
    for _ in range(attempts):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(pause)
    raise AssertionError(f"gave up waiting for {what}")


def two_routes(fake, fallback_fake, **containment) -> list[Route]:
    return [
        Route(name="primary", upstream=fake.url, fallback="backup", containment=containment or {}),
        Route(name="backup", upstream=fallback_fake.url, path_prefix="/never/"),
    ]


async def test_threshold_opens_sev2_and_next_request_goes_to_fallback(
    make_gateway, fake, fallback_fake, policy_dir
):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: leaks
    source: policy
    policies: [no-forbidden]
    severity: SEV2
    threshold: {count: 2, window: 300}
"""),
    )
    fake.script.text = BREACH
    proxy, admin, gw = await make_gateway(two_routes(fake, fallback_fake, fallback_on="SEV2"))
    for _ in range(2):
        resp = await proxy.post(CHAT, json=chat())
        assert resp.headers["x-governance-decision"] == "block"
    # two breaches are not more than two: nothing yet
    assert await incidents(admin) == []
    resp = await proxy.post(CHAT, json=chat())
    assert resp.headers["x-governance-decision"] == "block"
    # the very next request, with nobody waiting on the incident engine in between
    resp = await proxy.post(CHAT, json=chat())
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == fallback_fake.script.text
    assert resp.headers["x-governance-decision"] == "allow"
    assert len(fake.requests) == 3
    assert len(fallback_fake.requests) == 1

    [inc] = await incidents(admin)
    assert inc["severity"] == "SEV2"
    assert inc["state"] == "contained"
    assert inc["breach_count"] == 3
    assert inc["dedup_key"] == f"policy=no-forbidden/route=primary/upstream={fake.url}"
    record = await (
        await admin.get(
            f"/governance/v1/decisions/{resp.headers['x-governance-decision-id']}", headers=ADMIN
        )
    ).json()
    assert record["containment"]["mode"] == "fallback"
    assert record["route"] == "backup"

    restore = await admin.post(
        "/governance/v1/routes/primary/restore",
        headers=ADMIN,
        json={"reason": "primary model rolled back"},
    )
    assert restore.status == 200, await restore.text()
    resp = await proxy.post(CHAT, json=chat())
    assert resp.headers["x-governance-decision"] == "block"
    assert len(fake.requests) == 4

    timeline = (await detail(admin, inc["id"]))["timeline"]
    kinds = [e["kind"] for e in timeline]
    assert kinds[:3] == ["opened", "contained", "restored"]
    assert timeline[1]["data"]["mode"] == "fallback"
    assert timeline[1]["actor"] == "auto"
    assert timeline[2]["actor"] == "root"
    assert "primary model rolled back" in timeline[2]["message"]
    metrics = await (await admin.get("/metrics")).text()
    assert 'gateway_route_containment{mode="fallback",route="primary"} 0.0' in metrics
    assert re.search(
        r'gateway_containment_switches_total\{actor="auto",change="on",'
        r'mode="fallback",route="primary"\} 1\.0',
        metrics,
    )
    assert 'gateway_contained_requests_total{mode="fallback",route="primary"} 1.0' in metrics


async def test_repeated_breaches_update_one_incident_and_escalate(make_gateway, fake, policy_dir):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: leaks
    source: policy
    min_severity: high
    escalate:
      - {count: 3, window: 600, severity: SEV1}
"""),
    )
    fake.script.text = BREACH
    proxy, admin, gw = await make_gateway(upstream=fake)
    for _ in range(5):
        await proxy.post(CHAT, json=chat())
    [inc] = await incidents(admin)
    assert inc["breach_count"] == 5
    assert inc["requests"] == 5
    assert inc["severity"] == "SEV1"
    full = await detail(admin, inc["id"])
    kinds = [e["kind"] for e in full["timeline"]]
    assert kinds == ["opened", "escalated"]
    assert full["timeline"][0]["data"]["severity"] == "SEV2"
    assert full["timeline"][1]["data"] == {"from": "SEV2", "to": "SEV1", "breaches": 4}
    assert len(full["decision_ids"]) == 5
    assert full["by_policy"] == {"no-forbidden": 5}


async def test_low_severity_breaches_below_min_severity_raise_nothing(
    make_gateway, fake, policy_dir
):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: serious-only
    source: policy
    min_severity: high
"""),
    )
    fake.script.text = "Our competitor is fine."
    proxy, admin, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat())
    assert resp.headers["x-governance-decision"] == "allow"
    assert await incidents(admin) == []


async def test_quiet_incident_resolves_by_itself_and_reverts_when_asked(
    make_gateway, fake, fallback_fake, policy_dir
):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: leaks
    source: policy
    auto_resolve_after: 0.3
"""),
    )
    fake.script.text = BREACH
    proxy, admin, gw = await make_gateway(
        two_routes(fake, fallback_fake, fallback_on="SEV2", auto_revert=True),
        incidents={"tick": 0.05},
    )
    await proxy.post(CHAT, json=chat())
    [inc] = await incidents(admin)
    assert incidents_of(gw).table.switches["primary"].mode == "fallback"

    async def resolved():
        found = await incidents(admin, state="resolved")
        return found and found[0]

    done = await wait_for(resolved, "the quiet incident to resolve")
    assert done["id"] == inc["id"]
    assert "primary" not in incidents_of(gw).table.switches
    kinds = [e["kind"] for e in (await detail(admin, inc["id"]))["timeline"]]
    assert kinds == ["opened", "contained", "resolved", "restored"]
    resp = await proxy.post(CHAT, json=chat())
    assert resp.headers["x-governance-decision"] == "block"
    # a breach after resolution is a new incident, not a reopened one
    assert len(await incidents(admin)) == 2


async def test_without_auto_revert_containment_outlives_the_incident(
    make_gateway, fake, fallback_fake, policy_dir
):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: leaks
    source: policy
"""),
    )
    fake.script.text = BREACH
    proxy, admin, gw = await make_gateway(two_routes(fake, fallback_fake, fallback_on="SEV3"))
    await proxy.post(CHAT, json=chat())
    [inc] = await incidents(admin)
    resp = await admin.post(
        f"/governance/v1/incidents/{inc['id']}/resolved",
        headers=ADMIN,
        json={"note": "model rolled back"},
    )
    assert resp.status == 200
    assert (await resp.json())["state"] == "resolved"
    assert incidents_of(gw).table.switches["primary"].mode == "fallback"
    resp = await proxy.post(CHAT, json=chat())
    assert resp.headers["x-governance-route"] == "backup"


async def test_kill_switch_answers_without_calling_upstream(make_gateway, fake, policy_dir):
    routes = [
        Route(
            name="default",
            upstream=fake.url,
            containment={"block_message": "Paused for incident INC-1."},
        )
    ]
    proxy, admin, _ = await make_gateway(routes)
    resp = await admin.post(
        "/governance/v1/routes/default/contain",
        headers=ADMIN,
        json={"mode": "block", "reason": "drill"},
    )
    assert resp.status == 200, await resp.text()
    resp = await proxy.post(CHAT, json=chat())
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "Paused for incident INC-1."
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert resp.headers["x-governance-containment"] == "block"

    resp = await proxy.post(CHAT, json=chat(stream=True))
    raw = (await resp.read()).decode()
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        == "Paused for incident INC-1."
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert raw.rstrip().endswith("data: [DONE]")

    resp = await proxy.post(
        "/v1/messages",
        json={
            "model": "claude-test",
            "max_tokens": 10,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    raw = (await resp.read()).decode()
    names = re.findall(r"^event: (\S+)", raw, re.M)
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "Paused for incident INC-1." in raw
    assert fake.requests == []

    resp = await admin.post("/governance/v1/routes/default/restore", headers=ADMIN)
    assert resp.status == 200
    resp = await proxy.post(CHAT, json=chat())
    assert (await resp.json())["choices"][0]["message"]["content"] == fake.script.text


async def test_review_all_holds_every_response(make_gateway, fake):
    proxy, admin, _ = await make_gateway(upstream=fake)
    resp = await admin.post(
        "/governance/v1/routes/default/contain", headers=ADMIN, json={"mode": "review_all"}
    )
    assert resp.status == 200
    fake.script.text = "An entirely harmless answer about tomatoes."
    resp = await proxy.post(CHAT, json=chat())
    body = await resp.json()
    assert resp.headers["x-governance-decision"] == "review"
    assert "tomatoes" not in json.dumps(body)
    fake.script.chunk = 3
    resp = await proxy.post(CHAT, json=chat(stream=True))
    raw = await resp.read()
    assert b"tomatoes" not in raw and b"harmless" not in raw
    assert b"content_filter" in raw
    # containment's own hold never raises an incident of its own
    assert await incidents(admin) == []


async def test_containment_survives_restart(make_gateway, fake, fallback_fake):
    routes = two_routes(fake, fallback_fake)
    proxy, admin, _ = await make_gateway(routes)
    resp = await admin.post(
        "/governance/v1/routes/primary/contain", headers=ADMIN, json={"mode": "fallback"}
    )
    assert resp.status == 200
    await proxy.close()
    await admin.close()
    proxy, admin, gw = await make_gateway(routes)
    switch = incidents_of(gw).table.switches["primary"]
    assert (switch.mode, switch.actor) == ("fallback", "root")
    resp = await proxy.post(CHAT, json=chat())
    assert resp.headers["x-governance-route"] == "backup"
    listed = await (await admin.get("/governance/v1/routes/containment", headers=ADMIN)).json()
    assert [s["route"] for s in listed["containment"]] == ["primary"]


async def test_manual_fallback_needs_a_fallback_route(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await admin.post(
        "/governance/v1/routes/default/contain", headers=ADMIN, json={"mode": "fallback"}
    )
    assert resp.status == 409
    resp = await admin.post(
        "/governance/v1/routes/nope/contain", headers=ADMIN, json={"mode": "block"}
    )
    assert resp.status == 404
    resp = await admin.post(
        "/governance/v1/routes/default/contain", headers=ADMIN, json={"mode": "sideways"}
    )
    assert resp.status == 400


async def test_upstream_error_rate_opens_an_incident(make_gateway, fake, policy_dir):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: upstream-health
    source: upstream_errors
    rate: 0.5
    min_requests: 4
    window: 300
"""),
    )
    proxy, admin, _ = await make_gateway(upstream=fake)
    for _ in range(2):
        await proxy.post(CHAT, json=chat())
    fake.script.fault = "500"
    for _ in range(2):
        resp = await proxy.post(CHAT, json=chat())
        assert resp.status == 502
    [inc] = await incidents(admin)
    assert inc["source"] == "upstream_errors"
    assert inc["severity"] == "SEV2"
    assert inc["breach_count"] == 2
    assert inc["dedup_key"] == f"route=default/upstream={fake.url}"


async def test_monitor_events_open_and_clear_incidents(make_gateway, fake, policy_dir):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: fairness
    source: monitor
    monitors: [credit-*]
    rules: [disparate_impact]
"""),
    )
    _, admin, gw = await make_gateway(upstream=fake)
    service = incidents_of(gw)
    event = MonitorEvent(
        **{
            "monitor": "credit-decisions",
            "rule": "disparate_impact",
            "state": "fired",
            "route": "default",
            "at": 1_700_000_000.0,
            "observation": 400,
            "value": 0.61,
            "threshold": 0.8,
            "severity": "critical",
            "details": {"disadvantaged": "b"},
        }
    )
    # monitors may run in a worker thread: the event must still reach the loop
    await asyncio.to_thread(service.on_monitor_event, event)
    service.on_monitor_event(replace(event, rule="score_drift"))
    [inc] = await incidents(admin)
    assert inc["severity"] == "SEV1"
    assert inc["source"] == "monitor"
    service.on_monitor_event(replace(event, state="resolved", value=0.9))
    [inc] = await incidents(admin)
    assert inc["state"] == "resolved"
    timeline = (await detail(admin, inc["id"]))["timeline"]
    assert [e["actor"] for e in timeline] == ["gateway", "monitor"]


async def test_api_roles_and_lifecycle(make_gateway, fake, policy_dir):
    write_policies(policy_dir, with_rules("  - id: leaks\n    source: policy\n"))
    fake.script.text = BREACH
    proxy, admin, _ = await make_gateway(upstream=fake)
    await proxy.post(CHAT, json=chat())
    [inc] = await incidents(admin)
    base = f"/governance/v1/incidents/{inc['id']}"
    assert (await admin.get(base)).status == 401
    resp = await admin.post(f"{base}/acknowledge", headers=REVIEWER, json={"note": "on it"})
    assert resp.status == 200
    assert (await resp.json())["state"] == "acknowledged"
    assert (await admin.post(f"{base}/acknowledge", headers=REVIEWER)).status == 409
    resp = await admin.post(f"{base}/notes", headers=REVIEWER, json={"text": "looking at logs"})
    assert resp.status == 200
    resp = await admin.post(
        f"{base}/review-items", headers=REVIEWER, json={"review_item": "rev-123"}
    )
    assert (await resp.json())["review_items"] == ["rev-123"]
    assert (await admin.post(f"{base}/resolved", headers=REVIEWER)).status == 403
    assert (
        await admin.post(
            "/governance/v1/routes/default/contain", headers=REVIEWER, json={"mode": "block"}
        )
    ).status == 403
    assert (await admin.post(f"{base}/postmortem-done", headers=ADMIN)).status == 409
    assert (await admin.post(f"{base}/contained", headers=ADMIN)).status == 200
    assert (await admin.post(f"{base}/resolved", headers=ADMIN)).status == 200
    resp = await admin.post(f"{base}/postmortem-done", headers=ADMIN)
    assert (await resp.json())["state"] == "postmortem_done"
    timeline = (await detail(admin, inc["id"]))["timeline"]
    assert [(e["kind"], e["actor"]) for e in timeline] == [
        ("opened", "gateway"),
        ("acknowledged", "rita"),
        ("note", "rita"),
        ("review_linked", "rita"),
        ("contained", "root"),
        ("resolved", "root"),
        ("postmortem_done", "root"),
    ]
    assert await incidents(admin, state="open") == []
    assert len(await incidents(admin, active="false")) == 1
    bad = await admin.get("/governance/v1/incidents", params={"state": "sideways"}, headers=ADMIN)
    assert bad.status == 400


def test_rule_errors_point_into_the_yaml(tmp_path):
    path = write_policies(
        tmp_path,
        with_rules("""\
  - id: leaks
    source: policy
    treshold: {count: 2, window: 60}
  - id: sev
    source: policy
    severity: SEV7
  - id: odd
    source: weather
"""),
    )
    import yaml

    raw = yaml.safe_load(path.read_text())["incident_rules"]
    with pytest.raises(ConfigError) as err:
        parse_rules([(str(path), raw)])
    assert err.value.errors == [
        f"{path}:17:5: unknown-field: leaks.treshold (did you mean threshold?)",
        f"{path}:20:15: invalid-value: sev.severity: Value error, 'SEV7' is not a severity "
        "(use SEV1..SEV4 or critical, high, medium, low)",
        f"{path}:22:13: unknown-kind: odd.source: 'weather' (known: policy, detector_errors, "
        "monitor, upstream_errors)",
    ]


async def test_detector_errors_rule_counts_failing_checks(make_gateway, fake, policy_dir):
    write_policies(
        policy_dir,
        with_rules("""\
  - id: checks-failing
    source: detector_errors
    threshold: {count: 1, window: 600}
"""),
    )
    _, admin, gw = await make_gateway(upstream=fake)
    service = incidents_of(gw)

    def record(n: int, status: str) -> DecisionRecord:
        return DecisionRecord.from_json(
            {
                "decision_id": f"d{n}",
                "ts": time.time(),
                "route": "default",
                "upstream": fake.url,
                "action": "allow",
                "attempts": [],
                "policies": [
                    {
                        "id": "no-forbidden",
                        "status": status,
                        "severity": "high",
                        "mode": "enforce",
                        "error": "TimeoutError: scan took too long",
                    }
                ],
            }
        )

    service.on_decision(record(1, "error"))
    service.on_decision(record(2, "pass"))
    assert await incidents(admin) == []
    service.on_decision(record(3, "error"))
    [inc] = await incidents(admin)
    assert inc["source"] == "detector_errors"
    assert inc["title"] == "Policy no-forbidden check failing on route default"
    full = await detail(admin, inc["id"])
    assert full["decision_ids"] == ["d1", "d3"]
    assert full["samples"][0]["error"] == "TimeoutError: scan took too long"


async def test_invalid_rules_on_reload_keep_the_old_ones(make_gateway, fake, policy_dir):
    write_policies(policy_dir, with_rules("  - id: leaks\n    source: policy\n"))
    fake.script.text = BREACH
    proxy, admin, gw = await make_gateway(upstream=fake)
    write_policies(policy_dir, with_rules("  - id: leaks\n    source: policy\n    bogus: 1\n"))
    # the policy loader validates incident rules too: the whole reload is refused
    resp = await admin.post("/governance/v1/policies/reload", headers=ADMIN)
    assert resp.status == 422
    [error] = (await resp.json())["errors"]
    assert error.startswith(f"{policy_dir / 'main.yaml'}:17:5: unknown-field: leaks.bogus")
    await proxy.post(CHAT, json=chat())
    resp = await admin.get("/governance/v1/incidents", headers=ADMIN)
    body = await resp.json()
    assert len(body["incidents"]) == 1


async def test_invalid_rules_stop_the_gateway_from_starting(make_gateway, fake, policy_dir):
    write_policies(policy_dir, with_rules("  - id: leaks\n    source: nowhere\n"))
    with pytest.raises(ConfigError) as err:
        await make_gateway(upstream=fake)
    assert "unknown-kind: leaks.source: 'nowhere'" in err.value.errors[0]


def test_fallback_on_needs_a_fallback_route():
    from pydantic import ValidationError

    from gateway.config import Settings

    with pytest.raises(ValidationError, match="containment.fallback_on needs a fallback route"):
        Settings(
            routes=[{"name": "a", "upstream": "http://x", "containment": {"fallback_on": "SEV2"}}]
        )
    ok = Settings(routes=[{"name": "a", "upstream": "http://x"}])
    assert ok.routes[0].containment.fallback_on is None
    assert ok.incidents.sinks == []


async def test_real_monitor_events_feed_incidents(make_gateway, fake, policy_dir):
    import yaml

    from gateway.monitors.windows import MonitorSet, parse_monitors

    write_policies(
        policy_dir,
        with_rules("""\
  - id: rejections
    source: monitor
    rules: [rejection_rate]
"""),
    )
    _, admin, gw = await make_gateway(upstream=fake)
    service = incidents_of(gw)
    monitors = MonitorSet(
        parse_monitors(
            [
                (
                    "m.yaml",
                    yaml.safe_load("""
- id: credit
  routes: [credit]
  decision: {path: result.decision, reject_values: [rejected]}
  window: 10
  baseline: 20
  severity: medium
  rules:
    rejection_rate: {min_rise: 0.4}
"""),
                )
            ]
        ),
        on_event=service.on_monitor_event,
    )
    now = time.time()

    def observe(i: int, rejected: bool) -> None:
        body = {"result": {"decision": "rejected" if rejected else "approved"}}
        monitors.observe("credit", body, now=now + i)

    for i in range(40):
        observe(i, i >= 30 or i % 5 == 0)
    [inc] = await incidents(admin)
    assert (inc["source"], inc["route"], inc["severity"]) == ("monitor", "credit", "SEV3")
    assert inc["dedup_key"] == "monitor=credit/rule=rejection_rate/route=credit"
    full = await detail(admin, inc["id"])
    assert full["monitor"]["rule"] == "rejection_rate"
    for i in range(40, 80):
        observe(i, i % 5 == 0)
    [inc] = await incidents(admin)
    assert inc["state"] == "resolved"
    assert (await detail(admin, inc["id"]))["timeline"][-1]["actor"] == "monitor"


async def test_a_failed_store_write_is_retried_not_lost(
    make_gateway, fake, policy_dir, monkeypatch, caplog
):
    write_policies(policy_dir, with_rules("  - id: leaks\n    source: policy\n"))
    fake.script.text = BREACH
    proxy, admin, gw = await make_gateway(upstream=fake)
    original = gw.store.transaction
    calls = []

    async def flaky(statements, expect=None):
        calls.append(len(statements))
        if len(calls) == 1:
            raise ConnectionError("store unreachable")
        return await original(statements, expect)

    monkeypatch.setattr(gw.store, "transaction", flaky)
    await proxy.post(CHAT, json=chat())
    await wait_for(lambda: asyncio.sleep(0, result=bool(calls)), "the first write attempt")
    assert "writing incident state failed, retrying" in caplog.text
    [inc] = await incidents(admin)
    assert inc["breach_count"] == 1
    assert [e["kind"] for e in (await detail(admin, inc["id"]))["timeline"]] == ["opened"]
    assert len(calls) >= 2 and calls[1] >= calls[0]
