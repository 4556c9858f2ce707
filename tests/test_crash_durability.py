"""SIGKILL under load loses no decision record of an answer that started, and no breach
that matched an incident rule: the journal is replayed on the next start.

The gateway runs as a real process and is killed at random points while
clients stream and fetch breaching answers; what the clients saw start is
then compared with what the store holds.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import leak_policy_with_rule, write_policies
from tests.gateway_process import free_port, start_gateway, write_config

ROUNDS = 20
WORKERS = 8

pytestmark = pytest.mark.slow


async def load(proxy: str, started: list[str], stop: asyncio.Event) -> None:
    """Send requests until the gateway dies; note each decision whose answer started."""
    rng = random.Random()
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            stream = rng.random() < 0.5
            body = {
                "model": "gpt-test",
                "messages": [{"role": "user", "content": "the codes?"}],
                "stream": stream,
            }
            try:
                async with session.post(f"{proxy}/v1/chat/completions", json=body) as resp:
                    # the status line and headers arrived: the answer has started
                    started.append(resp.headers["x-governance-decision-id"])
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                return


def stored(db: Path) -> tuple[set[str], int]:
    """Decision ids in the store, and the breaches counted on incidents of the rule."""
    with sqlite3.connect(db) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM decisions")}
        (count,) = conn.execute(
            "SELECT COALESCE(SUM(breach_count), 0) FROM incidents WHERE rule_id = 'leaks'"
        ).fetchone()
    return ids, count


async def test_sigkill_loses_no_started_record_or_breach(fake, tmp_path: Path):
    write_policies(tmp_path / "policies", leak_policy_with_rule())
    fake.script.text = "Sure. The launch codes are 0000, as everyone knows by now."
    fake.script.chunk = 6
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, fake.url, proxy_port, admin_port)
    started: list[str] = []
    rng = random.Random(11)
    for _ in range(ROUNDS):
        gw = await start_gateway(config, admin_port, proxy_port)
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(gw.proxy, started, stop)) for _ in range(WORKERS)]
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        await gw.kill()
        stop.set()
        await asyncio.gather(*workers)
    assert len(started) > ROUNDS * 10  # the kills landed under real load
    # a clean start replays the last journal; a clean stop flushes everything
    gw = await start_gateway(config, admin_port, proxy_port)
    await gw.stop()
    ids, breaches = stored(tmp_path / "gateway.db")
    missing = set(started) - ids
    assert not missing, f"{len(missing)} of {len(started)} started answers have no record"
    # every answer breached the policy the rule watches
    assert breaches >= len(started)
    assert not list((tmp_path / "data" / "journal").glob("*.jsonl"))
