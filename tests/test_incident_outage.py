"""A sink outage and a SIGKILL in the middle of 200 breaches lose no incident event.

The gateway runs as a real process (``gateway serve --config``); the sink is a
local PagerDuty fake that is not even listening during the first part.
"""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap

import aiohttp
import pytest
from aiohttp import web

from tests.gateway_process import free_port, start_gateway
from tests.test_sinks import PD_KEY, FakeSinks

pytestmark = pytest.mark.slow

TOKEN = "outage-admin-token"
HEADERS = {"authorization": f"Bearer {TOKEN}"}


async def breach(http: aiohttp.ClientSession, port: int, model: str) -> None:
    async with http.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "x"}]},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["x-governance-decision"] == "block"


async def breaches(port: int, n: int) -> None:
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with gate:
            await breach(http, port, "alpha" if i % 2 else "beta")

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(i) for i in range(n)))


async def admin_json(admin: int, method: str, path: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"http://127.0.0.1:{admin}{path}", headers=HEADERS, json={}
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def test_sink_outage_and_sigkill_lose_no_event(tmp_path, fake):
    fake.script.text = "Sure, the launch codes are 1234."
    port, admin, sink_port = free_port(), free_port(), free_port()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.yaml").write_text(
        textwrap.dedent("""\
        policies:
          - id: no-forbidden
            kind: phrases
            phrases: ["launch codes"]
            action: block
            severity: high
        incident_rules:
          - id: leaks
            source: policy
        """)
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        listeners:
          proxy: {{host: 127.0.0.1, port: {port}}}
          admin: {{host: 127.0.0.1, port: {admin}}}
        routes:
          - {{name: alpha, models: [alpha], upstream: "{fake.url}"}}
          - {{name: beta, models: [beta], upstream: "{fake.url}"}}
        policies: [policies]
        store: {{url: "sqlite:///gateway.db"}}
        data_dir: data
        log_level: info
        auth:
          tokens: [{{name: root, token: {TOKEN}, roles: [admin]}}]
        incidents:
          tick: 0.1
          sinks:
            - name: pd
              type: pagerduty
              url: "http://127.0.0.1:{sink_port}/pd/v2/enqueue"
              secret_env: PD_KEY
          outbox: {{base_delay: 0.05, max_delay: 0.5, poll_interval: 0.1}}
        """)
    )
    gateway = await start_gateway(config, admin, port, env={"PD_KEY": PD_KEY})
    try:
        await breaches(port, 100)
        # every breach so far has been processed and written before the kill
        before = await admin_json(admin, "GET", "/governance/v1/incidents")
        assert sum(i["breach_count"] for i in before["incidents"]) == 100
        await gateway.kill()

        gateway = await start_gateway(config, admin, port, env={"PD_KEY": PD_KEY})
        await breaches(port, 100)
        listed = (await admin_json(admin, "GET", "/governance/v1/incidents"))["incidents"]
        assert len(listed) == 2
        assert sum(i["breach_count"] for i in listed) == 200
        for inc in listed:
            await admin_json(admin, "POST", f"/governance/v1/incidents/{inc['id']}/resolved")

        # the sink comes back
        sink = FakeSinks(pd_key=PD_KEY)
        runner = web.AppRunner(sink.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", sink_port).start()
        try:
            db = tmp_path / "gateway.db"
            for _ in range(600):
                with sqlite3.connect(db) as conn:
                    left = conn.execute("SELECT COUNT(*) FROM incident_outbox").fetchone()[0]
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            assert left == 0, "the outbox never drained"
        finally:
            await runner.cleanup()
    finally:
        await gateway.stop()

    assert sink.rejected == []
    keys = {i["dedup_key"] for i in listed}
    assert {a["dedup_key"] for a in sink.pd_alerts} == keys
    # one alert per dedup key, not one per breach
    assert len(sink.pd_alerts) == 2
    assert all(a["status"] == "resolved" for a in sink.pd_alerts)
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        events = conn.execute(
            "SELECT i.dedup_key, e.kind FROM incident_events e "
            "JOIN incidents i ON i.id = e.incident_id ORDER BY e.incident_id, e.seq"
        ).fetchall()
    expected: dict[str, list[str]] = {}
    for row in events:
        action = {"opened": "trigger", "resolved": "resolve"}[row["kind"]]
        expected.setdefault(row["dedup_key"], []).append(action)
    delivered: dict[str, list[str]] = {}
    for event in sink.pd_events:
        seen = delivered.setdefault(event["dedup_key"], [])
        # at least once: a repeat of the previous event is allowed, a gap or reorder is not
        if not seen or seen[-1] != event["event_action"]:
            seen.append(event["event_action"])
    assert delivered == expected == {k: ["trigger", "resolve"] for k in keys}
