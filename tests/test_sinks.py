"""Local fakes of PagerDuty, Opsgenie, Slack and a webhook receiver.

Each checks the payload against its service's documented schema and keeps
state the way the service does (PagerDuty and Opsgenie fold repeats by
dedup key / alias), so tests can assert on what an on-call person would see.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from aiohttp import web

PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_TOP = {
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "images",
    "links",
    "client",
    "client_url",
}
PD_PAYLOAD = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}
OG_PRIORITIES = {"P1", "P2", "P3", "P4", "P5"}
OG_CREATE = {
    "message",
    "alias",
    "description",
    "responders",
    "visibleTo",
    "actions",
    "tags",
    "details",
    "entity",
    "source",
    "priority",
    "user",
    "note",
}


class FakeSinks:
    def __init__(self, *, pd_key: str = "", og_key: str = "", hook_secret: str = "") -> None:
        self.pd_key, self.og_key, self.hook_secret = pd_key, og_key, hook_secret
        self.down = False
        self.fail_next = 0
        # seconds PagerDuty takes to answer after it has taken an event
        self.answer_after = 0.0
        self.requests: list[tuple[str, Any]] = []
        self.rejected: list[tuple[str, list[str]]] = []
        # PagerDuty: alerts by dedup_key, the latest one per key last
        self.pd_alerts: list[dict[str, Any]] = []
        self.pd_events: list[dict[str, Any]] = []
        self.og_alerts: dict[str, dict[str, Any]] = {}
        self.og_calls: list[tuple[str, str]] = []
        self.slack: list[dict[str, Any]] = []
        self.hooks: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/pd/v2/enqueue", self.pagerduty)
        app.router.add_post("/og/v2/alerts", self.og_create)
        app.router.add_post("/og/v2/alerts/{alias}/{action:acknowledge|close|notes}", self.og_act)
        app.router.add_put("/og/v2/alerts/{alias}/priority", self.og_priority)
        app.router.add_post("/slack/services/{a}/{b}/{c}", self.slack_hook)
        app.router.add_post("/hook", self.webhook)
        self.app = app

    def _fault(self) -> web.Response | None:
        if self.down:
            return web.Response(status=503, text="down")
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500, text="try later")
        return None

    def _reject(self, where: str, errors: list[str], status: int = 400) -> web.Response:
        self.rejected.append((where, errors))
        return web.json_response({"status": "invalid event", "errors": errors}, status=status)

    # -- PagerDuty Events API v2 ----------------------------------------------------------
    async def pagerduty(self, request: web.Request) -> web.Response:
        fault = self._fault()
        if fault is not None:
            return fault
        if request.content_type != "application/json":
            return self._reject("pd", ["content type must be application/json"])
        body = await request.json()
        self.requests.append(("pd", body))
        errors = []
        unknown = set(body) - PD_TOP
        if unknown:
            errors.append(f"unknown fields {sorted(unknown)}")
        if body.get("routing_key") != self.pd_key or len(body.get("routing_key", "")) != 32:
            errors.append("routing_key is not a valid 32 character integration key")
        action = body.get("event_action")
        if action not in PD_ACTIONS:
            errors.append("event_action must be trigger, acknowledge or resolve")
        key = body.get("dedup_key")
        if action in ("acknowledge", "resolve") and not key:
            errors.append("dedup_key is required to acknowledge or resolve")
        if key is not None and (not isinstance(key, str) or len(key) > 255):
            errors.append("dedup_key must be a string of at most 255 characters")
        if action == "trigger":
            payload = body.get("payload")
            if not isinstance(payload, dict):
                errors.append("payload is required for trigger")
            else:
                if set(payload) - PD_PAYLOAD:
                    errors.append(f"unknown payload fields {sorted(set(payload) - PD_PAYLOAD)}")
                summary = payload.get("summary")
                if not isinstance(summary, str) or not summary or len(summary) > 1024:
                    errors.append("payload.summary must be 1-1024 characters")
                if not isinstance(payload.get("source"), str) or not payload["source"]:
                    errors.append("payload.source is required")
                if payload.get("severity") not in PD_SEVERITIES:
                    errors.append("payload.severity must be critical, error, warning or info")
                if "timestamp" in payload:
                    try:
                        datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
                    except (AttributeError, ValueError):
                        errors.append("payload.timestamp must be ISO 8601")
                if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
                    errors.append("payload.custom_details must be an object")
        if errors:
            return self._reject("pd", errors)
        self.pd_events.append(body)
        open_alert = next(
            (
                a
                for a in reversed(self.pd_alerts)
                if a["dedup_key"] == key and a["status"] != "resolved"
            ),
            None,
        )
        if action == "trigger":
            if open_alert is None:
                open_alert = {"dedup_key": key, "status": "triggered", "triggers": 0}
                self.pd_alerts.append(open_alert)
            open_alert["triggers"] += 1
            open_alert["severity"] = body["payload"]["severity"]
            open_alert["summary"] = body["payload"]["summary"]
        elif open_alert is not None:
            open_alert["status"] = "acknowledged" if action == "acknowledge" else "resolved"
        if self.answer_after:
            await asyncio.sleep(self.answer_after)
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": key}, status=202
        )

    # -- Opsgenie Alert API -----------------------------------------------------------------
    def _og_auth(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"GenieKey {self.og_key}"

    @staticmethod
    def _accepted() -> web.Response:
        return web.json_response(
            {"result": "Request will be processed", "took": 0.01, "requestId": "req-1"}, status=202
        )

    async def og_create(self, request: web.Request) -> web.Response:
        fault = self._fault()
        if fault is not None:
            return fault
        if not self._og_auth(request):
            return self._reject("og", ["bad GenieKey"], 401)
        body = await request.json()
        self.requests.append(("og", body))
        errors = []
        if set(body) - OG_CREATE:
            errors.append(f"unknown fields {sorted(set(body) - OG_CREATE)}")
        message = body.get("message")
        if not isinstance(message, str) or not message or len(message) > 130:
            errors.append("message is required, at most 130 characters")
        if len(body.get("alias", "")) > 512:
            errors.append("alias is at most 512 characters")
        if len(body.get("description", "")) > 15000:
            errors.append("description is at most 15000 characters")
        if body.get("priority", "P3") not in OG_PRIORITIES:
            errors.append("priority must be P1-P5")
        details = body.get("details", {})
        if not isinstance(details, dict) or not all(isinstance(v, str) for v in details.values()):
            errors.append("details must map strings to strings")
        if not all(isinstance(t, str) for t in body.get("tags", [])):
            errors.append("tags must be strings")
        if errors:
            return self._reject("og", errors)
        alias = body.get("alias") or message
        alert = self.og_alerts.get(alias)
        if alert is None or alert["status"] == "closed":
            self.og_alerts[alias] = {
                "alias": alias,
                "status": "open",
                "count": 1,
                "acknowledged": False,
                "priority": body.get("priority"),
                "notes": [],
                "message": message,
            }
        else:
            alert["count"] += 1
        self.og_calls.append(("create", alias))
        return self._accepted()

    async def og_act(self, request: web.Request) -> web.Response:
        fault = self._fault()
        if fault is not None:
            return fault
        if not self._og_auth(request):
            return self._reject("og", ["bad GenieKey"], 401)
        if request.query.get("identifierType") != "alias":
            return self._reject("og", ["identifierType=alias expected"])
        alias, action = request.match_info["alias"], request.match_info["action"]
        body = await request.json()
        self.requests.append(("og", body))
        alert = self.og_alerts.get(alias)
        if alert is None:
            return self._reject("og", [f"no alert with alias {alias}"], 404)
        if action == "notes":
            if not isinstance(body.get("note"), str) or not body["note"]:
                return self._reject("og", ["note is required"])
            alert["notes"].append(body["note"])
        elif action == "acknowledge":
            alert["acknowledged"] = True
        else:
            alert["status"] = "closed"
        self.og_calls.append((action, alias))
        return self._accepted()

    async def og_priority(self, request: web.Request) -> web.Response:
        if not self._og_auth(request):
            return self._reject("og", ["bad GenieKey"], 401)
        alias = request.match_info["alias"]
        body = await request.json()
        if body.get("priority") not in OG_PRIORITIES or alias not in self.og_alerts:
            return self._reject("og", ["bad priority update"])
        self.og_alerts[alias]["priority"] = body["priority"]
        self.og_calls.append(("priority", alias))
        return self._accepted()

    # -- Slack incoming webhook --------------------------------------------------------------
    async def slack_hook(self, request: web.Request) -> web.Response:
        fault = self._fault()
        if fault is not None:
            return fault
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.Response(status=400, text="invalid_payload")
        problems = []
        if not isinstance(body.get("text"), str) and not body.get("blocks"):
            problems.append("no_text")
        for block in body.get("blocks", []):
            if block.get("type") not in ("header", "section", "context", "divider"):
                problems.append(f"bad block type {block.get('type')}")
            if block.get("type") == "header":
                text = block.get("text", {})
                if text.get("type") != "plain_text" or len(text.get("text", "")) > 150:
                    problems.append("header must be plain_text of at most 150 characters")
            if block.get("type") == "section":
                if len(block.get("fields", [])) > 10:
                    problems.append("at most 10 fields")
                for f in block.get("fields", []):
                    if f.get("type") not in ("mrkdwn", "plain_text") or len(f["text"]) > 2000:
                        problems.append("bad field")
        if problems:
            self.rejected.append(("slack", problems))
            return web.Response(status=400, text="invalid_payload")
        self.slack.append(body)
        return web.Response(text="ok")

    # -- signed webhook ---------------------------------------------------------------------
    async def webhook(self, request: web.Request) -> web.Response:
        fault = self._fault()
        if fault is not None:
            return fault
        raw = await request.read()
        stamp = request.headers.get("x-gateway-timestamp", "")
        expected = (
            "sha256="
            + hmac.new(
                self.hook_secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(expected, request.headers.get("x-gateway-signature", "")):
            self.rejected.append(("hook", ["bad signature"]))
            return web.Response(status=401, text="bad signature")
        body = json.loads(raw)
        if body["type"] != request.headers.get("x-gateway-event") or body[
            "id"
        ] != request.headers.get("x-gateway-delivery"):
            self.rejected.append(("hook", ["headers disagree with the body"]))
            return web.Response(status=400)
        self.hooks.append(body)
        return web.Response(status=204)


# -- tests ------------------------------------------------------------------------------------
import asyncio  # noqa: E402
import logging  # noqa: E402

import pytest  # noqa: E402

from gateway.incidents.sinks import sink_dedup_key  # noqa: E402
from tests.conftest import ADMIN_TOKEN, incidents_of, leak_policy_with_rule, write_policies  # noqa: E402

PD_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
OG_KEY = "og-api-key-secret-value"
HOOK_SECRET = "hook-shared-secret"
SLACK_PATH = "/slack/services/T000/B000/SeCrEtSlackToken"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/v1/chat/completions"

RULES = leak_policy_with_rule("    escalate:\n      - {count: 1, window: 600, severity: SEV1}\n")


@pytest.fixture
async def sinks(aiohttp_server, monkeypatch):
    fake = FakeSinks(pd_key=PD_KEY, og_key=OG_KEY, hook_secret=HOOK_SECRET)
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    monkeypatch.setenv("TEST_PD_KEY", PD_KEY)
    monkeypatch.setenv("TEST_OG_KEY", OG_KEY)
    monkeypatch.setenv("TEST_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("TEST_SLACK_URL", fake.url + SLACK_PATH)
    return fake


def sink_config(url: str, **outbox) -> dict:
    return {
        "sinks": [
            {
                "name": "pd",
                "type": "pagerduty",
                "url": f"{url}/pd/v2/enqueue",
                "secret_env": "TEST_PD_KEY",
            },
            {
                "name": "og",
                "type": "opsgenie",
                "url": f"{url}/og/v2/alerts",
                "secret_env": "TEST_OG_KEY",
            },
            {"name": "slack", "type": "slack", "url_env": "TEST_SLACK_URL"},
            {
                "name": "hook",
                "type": "webhook",
                "url": f"{url}/hook",
                "secret_env": "TEST_HOOK_SECRET",
            },
        ],
        "outbox": {"base_delay": 0.02, "max_delay": 0.2, "poll_interval": 0.05, **outbox},
        "public_url": "https://gateway.example/admin",
    }


async def drained(gw, attempts: int = 400) -> None:
    outbox = incidents_of(gw).outbox
    for _ in range(attempts):
        await incidents_of(gw).settle()
        if await outbox.pending() == 0:
            return
        await asyncio.sleep(0.05)
    rows = await gw.store.fetchall("SELECT id, attempts, last_error FROM incident_outbox")
    raise AssertionError(f"outbox not drained: {rows}")


async def open_incident(make_gateway, fake, policy_dir, sinks, n: int = 3, **outbox):
    write_policies(policy_dir, RULES)
    fake.script.text = "Sure, the launch codes are 1234."
    proxy, admin, gw = await make_gateway(upstream=fake, incidents=sink_config(sinks.url, **outbox))
    for _ in range(n):
        await proxy.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    [inc] = (await (await admin.get("/governance/v1/incidents", headers=ADMIN)).json())["incidents"]
    return proxy, admin, gw, inc


async def test_every_sink_gets_its_own_wire_format(make_gateway, fake, policy_dir, sinks):
    proxy, admin, gw, inc = await open_incident(make_gateway, fake, policy_dir, sinks)
    base = f"/governance/v1/incidents/{inc['id']}"
    assert (await admin.post(f"{base}/acknowledge", headers=ADMIN, json={})).status == 200
    assert (
        await admin.post(f"{base}/notes", headers=ADMIN, json={"text": "rolling back <model>"})
    ).status == 200
    assert (await admin.post(f"{base}/resolved", headers=ADMIN, json={})).status == 200
    await drained(gw)
    assert sinks.rejected == []

    # PagerDuty: one alert for the dedup key, in order trigger, trigger (escalation),
    # acknowledge, resolve
    assert [e["event_action"] for e in sinks.pd_events] == [
        "trigger",
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert {e["dedup_key"] for e in sinks.pd_events} == {sink_dedup_key(inc["dedup_key"])}
    [alert] = sinks.pd_alerts
    assert alert["status"] == "resolved"
    assert alert["severity"] == "critical"
    first = sinks.pd_events[0]
    assert first["payload"]["severity"] == "error"
    assert first["payload"]["custom_details"]["incident_id"] == inc["id"]
    assert first["links"] == [
        {
            "href": f"https://gateway.example/admin/incidents/{inc['id']}",
            "text": f"Incident {inc['id']}",
        }
    ]
    assert set(sinks.pd_events[2]) == {"routing_key", "event_action", "dedup_key"}

    # Opsgenie: created, priority raised, acknowledged, noted, closed, all by alias
    assert [c[0] for c in sinks.og_calls] == ["create", "priority", "acknowledge", "notes", "close"]
    [og] = sinks.og_alerts.values()
    assert (og["status"], og["acknowledged"], og["priority"]) == ("closed", True, "P1")
    assert og["notes"] == ["rolling back <model>"]

    # Slack: one message per event, escaped
    heads = [m["blocks"][0]["text"]["text"] for m in sinks.slack]
    assert [h.split(" incident ")[1].split(":")[0] for h in heads] == [
        "opened",
        "escalated",
        "acknowledged",
        "note added",
        "resolved",
    ]
    note = sinks.slack[3]
    assert note["blocks"][2]["text"]["text"] == "rolling back &lt;model&gt;"

    # webhook: signed, one delivery id each, every event including the review link kind
    assert [h["type"] for h in sinks.hooks] == [
        "incident.trigger",
        "incident.escalate",
        "incident.acknowledge",
        "incident.note",
        "incident.resolve",
    ]
    assert len({h["id"] for h in sinks.hooks}) == 5
    assert sinks.hooks[-1]["incident"]["state"] == "resolved"


async def test_failures_are_retried_in_order(make_gateway, fake, policy_dir, sinks):
    sinks.fail_next = 4
    proxy, admin, gw, inc = await open_incident(make_gateway, fake, policy_dir, sinks, n=1)
    base = f"/governance/v1/incidents/{inc['id']}"
    await admin.post(f"{base}/acknowledge", headers=ADMIN, json={})
    await admin.post(f"{base}/resolved", headers=ADMIN, json={})
    await drained(gw)
    assert [e["event_action"] for e in sinks.pd_events] == ["trigger", "acknowledge", "resolve"]
    assert [c[0] for c in sinks.og_calls] == ["create", "acknowledge", "close"]
    assert [h["type"] for h in sinks.hooks] == [
        "incident.trigger",
        "incident.acknowledge",
        "incident.resolve",
    ]
    metrics = await (await admin.get("/metrics")).text()
    retries = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_incident_deliveries_total") and 'outcome="retry"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in retries) == 4


async def test_secrets_stay_out_of_logs_and_outbox(make_gateway, fake, policy_dir, sinks, caplog):
    sinks.down = True
    caplog.set_level(logging.DEBUG)
    proxy, admin, gw, inc = await open_incident(make_gateway, fake, policy_dir, sinks, n=1)
    service = incidents_of(gw)
    for _ in range(400):
        rows = await gw.store.fetchall("SELECT attempts, payload, last_error FROM incident_outbox")
        if rows and all(r["attempts"] >= 2 for r in rows):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("deliveries were not retried")
    stored = json.dumps(rows)
    assert {r["last_error"] for r in rows} == {"HTTP 503"}
    # the gateway's own logs (the fake sink's access log is the test's, not ours)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    for secret in (PD_KEY, OG_KEY, HOOK_SECRET, "SeCrEtSlackToken"):
        assert secret not in ours
        assert secret not in stored
    assert "not delivered (HTTP 503)" in ours
    sinks.down = False
    await drained(gw)
    assert service.outbox.cfg.sinks[0].secret_env == "TEST_PD_KEY"


async def test_missing_credential_waits_instead_of_sending(
    make_gateway, fake, policy_dir, sinks, monkeypatch
):
    monkeypatch.delenv("TEST_PD_KEY")
    proxy, admin, gw, inc = await open_incident(make_gateway, fake, policy_dir, sinks, n=1)
    for _ in range(400):
        row = await gw.store.fetchone(
            "SELECT attempts, last_error FROM incident_outbox WHERE sink = 'pd'"
        )
        if row and row["attempts"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert row["last_error"] == "$TEST_PD_KEY is not set"
    assert sinks.pd_events == []
    monkeypatch.setenv("TEST_PD_KEY", PD_KEY)
    await drained(gw)
    assert [e["event_action"] for e in sinks.pd_events] == ["trigger"]


async def test_give_up_after_max_attempts(make_gateway, fake, policy_dir, sinks):
    sinks.down = True
    proxy, admin, gw, inc = await open_incident(
        make_gateway, fake, policy_dir, sinks, n=1, max_attempts=2
    )
    await drained(gw)
    dead = await gw.store.fetchall("SELECT sink, attempts FROM incident_outbox WHERE dead = 1")
    assert sorted(r["sink"] for r in dead) == ["hook", "og", "pd", "slack"]
    assert {r["attempts"] for r in dead} == {2}


def test_long_dedup_keys_are_hashed_stably():
    key = "policy=" + "x" * 300
    assert len(sink_dedup_key(key)) <= 255
    assert sink_dedup_key(key) == sink_dedup_key(key)
    assert sink_dedup_key("short") == "short"


async def test_sink_hears_of_an_incident_once_it_crosses_its_severity(
    make_gateway, fake, policy_dir, sinks
):
    write_policies(policy_dir, RULES.replace("count: 1,", "count: 2,"))
    fake.script.text = "Sure, the launch codes are 1234."
    config = sink_config(sinks.url)
    for sink in config["sinks"]:
        sink["min_severity"] = "SEV1"
    proxy, admin, gw = await make_gateway(upstream=fake, incidents=config)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    await proxy.post(CHAT, json=body)
    await drained(gw)
    assert sinks.pd_events == [] and sinks.og_calls == [] and sinks.hooks == []
    for _ in range(2):
        await proxy.post(CHAT, json=body)
    [inc] = (await (await admin.get("/governance/v1/incidents", headers=ADMIN)).json())["incidents"]
    assert inc["severity"] == "SEV1"
    await admin.post(f"/governance/v1/incidents/{inc['id']}/resolved", headers=ADMIN, json={})
    await drained(gw)
    assert sinks.rejected == []
    assert [e["event_action"] for e in sinks.pd_events] == ["trigger", "resolve"]
    assert sinks.pd_events[0]["payload"]["severity"] == "critical"
    assert [c[0] for c in sinks.og_calls] == ["create", "close"]
    assert [h["type"] for h in sinks.hooks] == ["incident.trigger", "incident.resolve"]
