"""The decision log's writer against a real store, with writes slowed or failed."""

from __future__ import annotations

import asyncio

from gateway.observability.decisions import DecisionLog
from gateway.observability.metrics import Metrics
from tests.test_store import record


class SlowStore:
    """The real store, with each batch write held until released or failed."""

    def __init__(self, store):
        self.store = store
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def insert_decisions(self, records):
        self.calls.append([r.decision_id for r in records])
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("store unavailable")
        await self.store.insert_decisions(records)


async def stored_ids(store) -> list[str]:
    rows = await store.list_decisions(limit=100)
    return sorted(r["decision_id"] for r in rows)


async def test_concurrent_flushes_write_each_record_once(store):
    slow = SlowStore(store)
    log = DecisionLog(slow, Metrics(), batch=2)
    for i in range(5):
        log.add(record(i))
    first = asyncio.create_task(log.flush())
    second = asyncio.create_task(log.flush())
    await asyncio.sleep(0.01)
    slow.release.set()
    await asyncio.gather(first, second)
    written = [i for call in slow.calls for i in call]
    assert sorted(written) == [f"d{i:04d}" for i in range(5)]
    assert await stored_ids(store) == [f"d{i:04d}" for i in range(5)]


async def test_records_dropped_during_a_write_are_the_oldest_waiting(store):
    metrics = Metrics()
    slow = SlowStore(store)
    log = DecisionLog(slow, metrics, max_queue=3, batch=2)
    for i in range(3):
        log.add(record(i))
    flushing = asyncio.create_task(log.flush())
    await asyncio.sleep(0.01)  # d0000 and d0001 are in flight; d0002 waits
    for i in range(3, 7):
        log.add(record(i))  # overflow drops d0002 then d0003
    slow.release.set()
    await flushing
    assert await stored_ids(store) == ["d0000", "d0001", "d0004", "d0005", "d0006"]
    assert metrics.decisions_dropped._value.get() == 2


async def test_a_failed_write_keeps_the_batch_in_order(store):
    slow = SlowStore(store)
    log = DecisionLog(slow, Metrics(), batch=2)
    for i in range(3):
        log.add(record(i))
    slow.fail_next = True
    slow.release.set()
    try:
        await log.flush()
    except ConnectionError:
        pass
    else:
        raise AssertionError("the store failure should reach the caller")
    assert await stored_ids(store) == []
    await log.flush()
    assert slow.calls[-2:] == [["d0000", "d0001"], ["d0002"]]
    assert await stored_ids(store) == ["d0000", "d0001", "d0002"]
