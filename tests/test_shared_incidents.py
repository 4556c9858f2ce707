"""Two gateway processes on one PostgreSQL store share their incident state.

Each process is a real ``gateway serve`` with its own ports and data
directory; only the store is shared. One of them leads the incident rules
(an advisory lock); the other hands its signals over through the store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg

from gateway.store.leadership import lock_key
from tests.conftest import ADMIN_TOKEN, PG_DSN, leak_policy_with_rule, write_policies
from tests.gateway_process import GatewayProcess, free_port, start_gateway, write_config

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
TOKENS = f"- {{name: ops, token: {ADMIN_TOKEN}, roles: [admin]}}\n"
BREACH = {"model": "gpt-test", "messages": [{"role": "user", "content": "the codes?"}]}


async def start_pair(
    tmp_path: Path, upstream: str, pg_url: str, policies: str
) -> list[GatewayProcess]:
    """Gateways A and B: their own ports and data, one store."""
    pair = []
    for name in ("a", "b"):
        home = tmp_path / name
        write_policies(home / "policies", policies)
        proxy_port, admin_port = free_port(), free_port()
        config = write_config(home, upstream, proxy_port, admin_port, tokens=TOKENS)
        pair.append(
            await start_gateway(config, admin_port, proxy_port, env={"GATEWAY_STORE_URL": pg_url})
        )
    return pair


async def incidents(gw: GatewayProcess) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.admin}/governance/v1/incidents", headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["incidents"]


async def until(check, seconds: float = 15.0):
    """``check()``'s first truthy result, polling; None after ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    return None


async def test_a_storm_over_two_processes_opens_one_incident_counting_both(
    fake, tmp_path: Path, pg_url: str
):
    fake.script.text = "Sure. The launch codes are 0000."
    a, b = await start_pair(tmp_path, fake.url, pg_url, leak_policy_with_rule())
    try:
        async with aiohttp.ClientSession() as session:

            async def send(gw: GatewayProcess) -> None:
                async with session.post(f"{gw.proxy}/v1/chat/completions", json=BREACH) as resp:
                    assert resp.status == 200
                    assert resp.headers["x-governance-decision"] == "block"

            await asyncio.gather(*(send(gw) for _ in range(15) for gw in (a, b)))

        async def counted():
            found = await incidents(b)
            return found if found and found[0]["breach_count"] >= 30 else None

        found = await until(counted)
        assert found is not None, await incidents(b)
        assert len(found) == 1
        assert found[0]["breach_count"] == 30
        # A, whichever of the two leads, reads the same single incident
        assert [i["id"] for i in await incidents(a)] == [found[0]["id"]]
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_a_person_acts_on_an_incident_through_either_process(
    fake, tmp_path: Path, pg_url: str
):
    fake.script.text = "Sure. The launch codes are 0000."
    a, b = await start_pair(tmp_path, fake.url, pg_url, leak_policy_with_rule())
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{a.proxy}/v1/chat/completions", json=BREACH) as resp:
                assert resp.status == 200
            found = await until(lambda: incidents(a))
            assert found, "no incident opened"
            incident = found[0]["id"]
            for gw, action in ((a, "acknowledge"), (b, "resolved")):
                url = f"{gw.admin}/governance/v1/incidents/{incident}/{action}"
                async with session.post(url, json={"note": f"by {gw.admin}"}, headers=AUTH) as r:
                    assert r.status == 200, await r.text()
            # the second acknowledge is refused wherever it is asked, with the leader's reason
            for gw in (a, b):
                url = f"{gw.admin}/governance/v1/incidents/{incident}/acknowledge"
                async with session.post(url, json={}, headers=AUTH) as r:
                    assert r.status == 409, await r.text()
                async with session.get(
                    f"{gw.admin}/governance/v1/incidents/{incident}", headers=AUTH
                ) as r:
                    detail = await r.json()
                assert detail["state"] == "resolved"
                kinds = [e["kind"] for e in detail["timeline"]]
                assert kinds.count("acknowledged") == 1 and kinds.count("resolved") == 1
    finally:
        await asyncio.gather(a.stop(), b.stop())


MONITORED = """\
policies:
  - {id: noop, kind: phrases, phrases: [never said]}
monitors:
  - id: credit
    routes: [default]
    decision: {path: result.decision, reject_values: [rejected]}
    window: 20
    baseline: 40
    min_baseline: 40
    rules:
      rejection_rate: {min_rise: 0.4, relative: true}
incident_rules:
  - id: credit-spike
    source: monitor
    rules: [rejection_rate]
"""
RAG_ROUTE = """\
protocol: rag-json
path_prefix: /rag/
rag: {text_path: result.answer}
"""


async def test_a_rejection_spike_split_over_two_processes_raises_the_monitor_incident(
    aiohttp_server, tmp_path: Path, pg_url: str
):
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"result": {"answer": "ok", "decision": body["decision"]}})

    app = web.Application()
    app.router.add_post("/rag/answer", answer)
    server = await aiohttp_server(app)
    upstream = str(server.make_url("")).rstrip("/")
    pair = []
    for name in ("a", "b"):
        home = tmp_path / name
        write_policies(home / "policies", MONITORED)
        proxy_port, admin_port = free_port(), free_port()
        config = write_config(
            home, upstream, proxy_port, admin_port, tokens=TOKENS, route_extra=RAG_ROUTE
        )
        pair.append(
            await start_gateway(config, admin_port, proxy_port, env={"GATEWAY_STORE_URL": pg_url})
        )
    a, b = pair
    try:
        # 10% rejections for the baseline, then 60%; each process sees every other answer,
        # 30 in all: short of the 60 a window and its baseline need, so neither alone fires
        decisions = (["approved"] * 9 + ["rejected"]) * 4 + (
            ["rejected"] * 6 + ["approved"] * 4
        ) * 2
        async with aiohttp.ClientSession() as session:
            for i, decision in enumerate(decisions):
                gw = (a, b)[i % 2]
                async with session.post(
                    f"{gw.proxy}/rag/answer", json={"query": "q", "decision": decision}
                ) as resp:
                    assert resp.status == 200, await resp.text()
                # in order: the leader's windows see the answers as they were given
                await asyncio.sleep(0.02)

        async def spike():
            found = await incidents(a)
            return [i for i in found if i["rule"] == "credit-spike"]

        found = await until(spike)
        assert found and len(found) == 1, await incidents(a)
        assert found[0]["source"] == "monitor"
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_a_route_contained_on_one_process_is_contained_on_the_other_within_2s(
    fake, tmp_path: Path, pg_url: str
):
    a, b = await start_pair(tmp_path, fake.url, pg_url, leak_policy_with_rule())
    ask = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}
    try:
        async with aiohttp.ClientSession() as session:

            async def contained(gw: GatewayProcess) -> bool:
                async with session.post(f"{gw.proxy}/v1/chat/completions", json=ask) as resp:
                    await resp.read()
                    return resp.headers.get("x-governance-containment") == "block"

            assert not await contained(b)
            for gw, verb, want in ((a, "contain", True), (b, "restore", False)):
                other = b if gw is a else a
                url = f"{gw.admin}/governance/v1/routes/default/{verb}"
                async with session.post(url, json={"mode": "block"}, headers=AUTH) as resp:
                    assert resp.status == 200, await resp.text()
                started = asyncio.get_running_loop().time()
                # reconcile_interval is 5 s: only the notice can make it within 2 s
                while await contained(other) != want:
                    assert asyncio.get_running_loop().time() - started < 2.0
                    await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_when_the_leaders_lock_connection_dies_the_other_process_takes_over(
    fake, tmp_path: Path, pg_url: str, pg_schema: str
):
    fake.script.text = "Sure. The launch codes are 0000."
    a, b = await start_pair(tmp_path, fake.url, pg_url, leak_policy_with_rule())
    try:
        async with aiohttp.ClientSession() as session:

            async def leaders() -> list[str]:
                found = []
                for gw in (a, b):
                    async with session.get(f"{gw.admin}/readyz") as resp:
                        if (await resp.json())["checks"].get("leader") == "yes":
                            found.append(gw.admin)
                return found

            [first] = await until(leaders)
            assert first
            # the backend holding this schema's leadership lock is the leader's
            key = lock_key("signals", pg_schema)
            conn = await asyncpg.connect(PG_DSN)
            try:
                killed = await conn.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND granted AND classid = $1 AND objid = $2",
                    key >> 32,
                    key & 0xFFFFFFFF,
                )
                assert killed
            finally:
                await conn.close()

            async def moved() -> list[str] | None:
                now = await leaders()
                return now if len(now) == 1 else None

            # one leader again (either process may win the free lock), and it works
            assert await until(moved)

            async def send(gw: GatewayProcess) -> None:
                async with session.post(f"{gw.proxy}/v1/chat/completions", json=BREACH) as resp:
                    assert resp.status == 200

            await asyncio.gather(*(send(gw) for _ in range(5) for gw in (a, b)))

            async def counted():
                found = await incidents(a)
                return found if found and found[0]["breach_count"] >= 10 else None

            found = await until(counted)
            assert found and len(found) == 1 and found[0]["breach_count"] == 10, found
    finally:
        await asyncio.gather(a.stop(), b.stop())
