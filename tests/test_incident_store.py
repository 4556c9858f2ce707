"""Incidents, timelines, outbox and containment on both store backends."""

from __future__ import annotations

import asyncio

from gateway.config import Route
from tests.conftest import ADMIN_TOKEN, incidents_of, leak_policy_with_rule, write_policies
from tests.test_sinks import PD_KEY, FakeSinks

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/v1/chat/completions"

POLICIES = leak_policy_with_rule()


async def test_lifecycle_on_each_backend(
    store_url, monkeypatch, make_gateway, fake, fallback_fake, policy_dir, aiohttp_server
):
    monkeypatch.setenv("GATEWAY_STORE_URL", store_url)
    monkeypatch.setenv("TEST_PD_KEY", PD_KEY)
    sink = FakeSinks(pd_key=PD_KEY)
    server = await aiohttp_server(sink.app)
    write_policies(policy_dir, POLICIES)
    fake.script.text = "the launch codes are 1"
    routes = [
        Route(
            name="primary",
            upstream=fake.url,
            fallback="backup",
            containment={"fallback_on": "SEV2"},
        ),
        Route(name="backup", upstream=fallback_fake.url, path_prefix="/never/"),
    ]
    incidents = {
        "sinks": [
            {
                "name": "pd",
                "type": "pagerduty",
                "secret_env": "TEST_PD_KEY",
                "url": str(server.make_url("/pd/v2/enqueue")),
            }
        ],
        "outbox": {"base_delay": 0.02, "poll_interval": 0.05},
    }
    proxy, admin, gw = await make_gateway(routes, incidents=incidents)
    assert gw.store.dialect == ("postgresql" if store_url.startswith("postgres") else "sqlite")
    await proxy.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    [inc] = (await (await admin.get("/governance/v1/incidents", headers=ADMIN)).json())["incidents"]
    assert inc["state"] == "contained"
    note = await admin.post(
        f"/governance/v1/incidents/{inc['id']}/notes", headers=ADMIN, json={"text": "checking"}
    )
    assert note.status == 200
    await proxy.close()
    await admin.close()

    # a restart finds the open incident and the switch where it left them
    proxy, admin, gw = await make_gateway(routes, incidents=incidents)
    assert incidents_of(gw).table.switches["primary"].incident_id == inc["id"]
    resp = await proxy.post(
        CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.headers["x-governance-route"] == "backup"
    resp = await admin.post(f"/governance/v1/incidents/{inc['id']}/resolved", headers=ADMIN)
    assert resp.status == 200
    service = incidents_of(gw)
    for _ in range(200):
        if await service.outbox.pending() == 0 and len(sink.pd_events) == 2:
            break
        await asyncio.sleep(0.05)
    assert [e["event_action"] for e in sink.pd_events] == ["trigger", "resolve"]
    detail = await (await admin.get(f"/governance/v1/incidents/{inc['id']}", headers=ADMIN)).json()
    assert [e["kind"] for e in detail["timeline"]] == ["opened", "contained", "note", "resolved"]
    assert detail["breach_count"] == 1
    assert (
        await (
            await admin.get("/governance/v1/incidents", params={"active": "true"}, headers=ADMIN)
        ).json()
    )["incidents"] == []


async def test_a_delivery_in_flight_at_shutdown_is_finished_not_sent_again(
    store_url, monkeypatch, make_gateway, fake, policy_dir, aiohttp_server
):
    monkeypatch.setenv("GATEWAY_STORE_URL", store_url)
    monkeypatch.setenv("TEST_PD_KEY", PD_KEY)
    sink = FakeSinks(pd_key=PD_KEY)
    sink.answer_after = 0.5
    server = await aiohttp_server(sink.app)
    write_policies(policy_dir, POLICIES)
    fake.script.text = "the launch codes are 1"
    incidents = {
        "sinks": [
            {
                "name": "pd",
                "type": "pagerduty",
                "secret_env": "TEST_PD_KEY",
                "url": str(server.make_url("/pd/v2/enqueue")),
            }
        ],
        "outbox": {"base_delay": 0.02, "poll_interval": 0.05},
    }
    proxy, admin, gw = await make_gateway(upstream=fake, incidents=incidents)
    await proxy.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    for _ in range(200):
        if sink.pd_events:
            break
        await asyncio.sleep(0.01)
    # the sink has the trigger and has not answered yet: stop now
    await proxy.close()
    await admin.close()
    proxy, admin, gw = await make_gateway(upstream=fake, incidents=incidents)
    assert await incidents_of(gw).outbox.pending() == 0
    await asyncio.sleep(0.3)
    assert [e["event_action"] for e in sink.pd_events] == ["trigger"]
