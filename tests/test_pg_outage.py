"""PostgreSQL goes away under a running gateway and comes back: nothing answered is lost.

The gateway is a real process whose store URL points at a relay in front of
the real PostgreSQL; cutting the relay is the outage the gateway sees. During
it the proxy keeps serving, ``/readyz`` stays in rotation and names the
store, a held answer follows ``review.on_store_down``; afterwards every
decision record of an answered request is in the store and every breach is
counted on its incident, without a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg

from tests.conftest import ADMIN_TOKEN, PG_DSN, leak_policy_with_rule, write_policies
from tests.gateway_process import free_port, start_gateway, write_config

TOKENS = f"- {{name: ops, token: {ADMIN_TOKEN}, roles: [admin]}}\n"
HOLD = """\
  - id: hold-sauce
    kind: phrases
    phrases: ["secret sauce"]
    action: review
"""


def ask(word: str) -> dict:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": word}]}


async def test_an_outage_loses_nothing_answered_and_heals_by_itself(
    fake, tmp_path: Path, pg_schema: str, pg_relay
):
    relay, store = pg_relay
    policies = leak_policy_with_rule("    policies: [no-forbidden]\n").replace(
        "policies:\n", "policies:\n" + HOLD, 1
    )
    write_policies(tmp_path / "policies", policies)
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, fake.url, proxy_port, admin_port, tokens=TOKENS)
    gw = await start_gateway(config, admin_port, proxy_port, env={"GATEWAY_STORE_URL": store})
    answered: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def send(word: str, text: str) -> aiohttp.ClientResponse:
                fake.script.text = text
                async with http.post(f"{gw.proxy}/v1/chat/completions", json=ask(word)) as resp:
                    await resp.read()
                if resp.status == 200:
                    answered.append(resp.headers["x-governance-decision-id"])
                return resp

            for _ in range(3):
                assert (await send("hi", "The launch codes are 0000.")).status == 200
            await relay.cut()
            # the proxy serves on; breaches and clean answers alike
            for _ in range(5):
                resp = await send("hi", "The launch codes are 0000.")
                assert resp.status == 200
                assert resp.headers["x-governance-decision"] == "block"
                resp = await send("hi", "All is calm.")
                assert resp.status == 200
            # a hold cannot be stored: the default releases nothing
            resp = await send("hi", "It is the secret sauce.")
            assert resp.status == 503
            assert resp.headers["x-governance-error-code"] == "review-unavailable"
            async with http.get(f"{gw.admin}/readyz") as ready:
                body = await ready.json()
            # one replica's view of a shared outage: still in rotation, and it says why
            assert ready.status == 200, body
            assert body["checks"]["store"].startswith("down") and "store" in body["missing"]
            await relay.restore()

            async def healed() -> bool:
                async with http.get(f"{gw.admin}/readyz") as ready:
                    return (await ready.json())["checks"]["store"] == "ok"

            for _ in range(300):
                if await healed():
                    break
                await asyncio.sleep(0.1)
            assert await healed()
            conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": pg_schema})
            try:
                for _ in range(300):
                    ids = {r["id"] for r in await conn.fetch("SELECT id FROM decisions")}
                    breaches = await conn.fetchval(
                        "SELECT COALESCE(SUM(breach_count), 0) FROM incidents "
                        "WHERE rule_id = 'leaks'"
                    )
                    if set(answered) <= ids and breaches >= 8:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            assert set(answered) <= ids, f"{len(set(answered) - ids)} records lost"
            assert breaches == 8
    finally:
        await gw.stop()
