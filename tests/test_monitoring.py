"""Monitors in the running gateway: fed by responses, raising events, surviving restarts."""

from __future__ import annotations

import asyncio

from gateway.config import Route
from gateway.monitors.subsystem import Monitors
from gateway.records.monitor import MonitorEvent
from tests.conftest import ADMIN_TOKEN, write_policies

MONITORS = """\
policies:
  - {id: noop, kind: phrases, phrases: [never said]}
monitors:
  - id: credit
    routes: [credit]
    decision: {path: result.decision, reject_values: [rejected]}
    window: 20
    baseline: 40
    min_baseline: 40
    rules:
      rejection_rate: {min_rise: 0.4, relative: true}
"""


async def test_monitor_fires_on_rejection_spike_and_keeps_windows(
    make_gateway, policy_dir, aiohttp_server
):
    from aiohttp import web

    decisions: list[str] = []

    async def answer(request):
        return web.json_response({"result": {"answer": "ok", "decision": decisions.pop(0)}})

    app = web.Application()
    app.router.add_post("/rag/answer", answer)
    server = await aiohttp_server(app)
    write_policies(policy_dir, MONITORS)
    routes = [
        Route(
            name="credit",
            upstream=str(server.make_url("")).rstrip("/"),
            protocol="rag-json",
            path_prefix="/rag/",
            rag={"text_path": "result.answer"},
        )
    ]
    proxy, admin, gw = await make_gateway(routes)
    service = gw.subsystem(Monitors)
    seen: list[MonitorEvent] = []
    gw.events.subscribe(MonitorEvent, seen.append)
    # a baseline of 10% rejections, then a window at 60%
    decisions[:] = (["approved"] * 9 + ["rejected"]) * 4 + (["rejected"] * 6 + ["approved"] * 4) * 2
    for _ in range(len(decisions)):
        await (await proxy.post("/rag/answer", json={"query": "q"})).read()
    await asyncio.sleep(0.05)
    fired = [e for e in seen if e.state == "fired" and e.rule == "rejection_rate"]
    assert len(fired) == 1 and fired[0].monitor == "credit"
    metrics = await (await admin.get("/metrics")).text()
    fired_line = (
        'gateway_monitor_events_total{monitor="credit",rule="rejection_rate",state="fired"} 1.0'
    )
    assert fired_line in metrics
    status = await (
        await admin.get(
            "/governance/v1/monitors", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    ).json()
    assert status["monitors"][0]["observations"] == 60
    # the windows are in the store, for the next start
    await service.set.asave(service.state)
    saved = await service.state.load_state("monitor:credit")
    assert saved is not None
    from gateway.monitors.windows import MonitorSet, parse_monitors

    again = MonitorSet(parse_monitors(gw.policies.current.sections["monitors"]))
    await again.aload(service.state)
    assert again.monitors["credit"].count == 60
