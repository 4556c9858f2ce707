"""An acknowledged hold survives SIGKILL: the gateway runs as a real process here."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REVIEWER_TOKEN, write_policies
from tests.gateway_process import free_port, start_gateway, write_config
from tests.test_review_api import REVIEW_POLICIES, SAUCE

ROUNDS = 20


async def start(tmp_path: Path, upstream: str, ports: tuple[int, int]):
    proxy_port, admin_port = ports
    config = write_config(
        tmp_path,
        upstream,
        proxy_port,
        admin_port,
        tokens=f"- {{name: rita, token: {REVIEWER_TOKEN}, roles: [reviewer]}}\n",
    )
    gw = await start_gateway(config, admin_port, proxy_port)
    return gw, gw.proxy, gw.admin


@pytest.mark.slow
async def test_acknowledged_holds_survive_sigkill(fake, tmp_path):
    write_policies(tmp_path / "policies", REVIEW_POLICIES)
    fake.script.text = SAUCE
    acknowledged: list[str] = []
    ports = (free_port(), free_port())
    headers = {"authorization": "Bearer sk-durable"}
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(ROUNDS):
            proc, proxy, admin = await start(tmp_path, fake.url, ports)
            try:
                # every item acknowledged before the last kill is in the queue after restart
                listing = await (
                    await session.get(
                        f"{admin}/governance/v1/reviews?limit=1000",
                        headers={"authorization": f"Bearer {REVIEWER_TOKEN}"},
                    )
                ).json()
                assert {i["id"] for i in listing["items"]} == set(acknowledged)
                async with session.post(
                    f"{proxy}/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    assert resp.status == 200
                    await resp.read()
                    review_id = resp.headers["x-governance-review-id"]
            finally:
                await proc.kill()
            acknowledged.append(review_id)
        proc, proxy, admin = await start(tmp_path, fake.url, ports)
        try:
            listing = await (
                await session.get(
                    f"{admin}/governance/v1/reviews?limit=1000",
                    headers={"authorization": f"Bearer {REVIEWER_TOKEN}"},
                )
            ).json()
            assert sorted(i["id"] for i in listing["items"]) == sorted(acknowledged)
            assert len(acknowledged) == ROUNDS
            poll = await session.get(
                f"{admin}/governance/v1/reviews/{acknowledged[0]}/result", headers=headers
            )
            assert (await poll.json())["status"] == "pending"
        finally:
            await proc.kill()
