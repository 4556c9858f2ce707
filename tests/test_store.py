from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import StoreUnavailable
from gateway.records.decision import DecisionRecord
from gateway.store import open_store


def record(i: int, route: str = "default", action: str = "allow") -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{i:04d}",
        ts=time.time() + i,
        route=route,
        upstream="http://upstream",
        protocol="openai-chat",
        path="/v1/chat/completions",
        model="m",
        stream=False,
        revision="rev",
        action=action,
    )


async def test_decisions_roundtrip(store):
    await store.insert_decisions([record(i) for i in range(5)] + [record(9, action="block")])
    got = await store.get_decision("d0003")
    assert got["decision_id"] == "d0003" and got["model"] == "m"
    assert await store.get_decision("nope") is None
    blocked = await store.list_decisions(action="block")
    assert [r["decision_id"] for r in blocked] == ["d0009"]
    latest = await store.list_decisions(limit=2)
    assert [r["decision_id"] for r in latest] == ["d0009", "d0004"]


async def test_duplicate_decision_ids_are_ignored(store):
    await store.insert_decisions([record(1)])
    await store.insert_decisions([record(1, action="block")])
    assert (await store.get_decision("d0001"))["action"] == "allow"


async def test_transaction_is_atomic(store):
    await store.insert_decisions([record(1)])
    try:
        await store.transaction(
            [
                ("UPDATE decisions SET action = ? WHERE id = ?", ("block", "d0001")),
                ("INSERT INTO no_such_table VALUES (?)", (1,)),
            ]
        )
    except Exception:
        pass
    else:
        raise AssertionError("the bad statement should have failed the transaction")
    row = await store.fetchone("SELECT action FROM decisions WHERE id = ?", "d0001")
    assert row["action"] == "allow"
    counts = await store.transaction(
        [
            ("UPDATE decisions SET action = ? WHERE id = ?", ("block", "d0001")),
            ("UPDATE decisions SET action = ? WHERE id = ?", ("block", "missing")),
        ]
    )
    assert counts == [1, 0]


async def test_migrations_run_once(store_url):
    for _ in range(2):
        s = open_store(store_url)
        await s.open()
        rows = await s.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        await s.close()
    from gateway.store.migrations import MIGRATIONS

    assert [r["version"] for r in rows] == sorted(m[0] for m in MIGRATIONS)


async def test_a_postgres_server_that_stops_answering_makes_the_store_unavailable_in_bounds(
    pg_relay,
):
    """A server that accepts connections but never answers is an outage, not a minute's wait."""
    relay, url = pg_relay
    store = open_store(url)
    try:
        await store.open()
        await store.insert_decisions([record(1)])
        await relay.stall()
        # the pooled connection has seen its end: the next call needs a new one
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # asyncpg alone would wait about a minute to connect; the functional bound is 30 s
        async with asyncio.timeout(30):
            with pytest.raises(StoreUnavailable):
                await store.get_decision("d0001")
        assert loop.time() - started < 30
        await relay.restore()
        assert (await store.get_decision("d0001"))["decision_id"] == "d0001"
    finally:
        await store.close()
