"""Two processes that both believe they lead, for a moment, never apply a signal twice.

A leader whose lock connection died keeps ``leader = True`` until its next
check, while another process has already taken the lock. Both read the same
queued signals; the removal each commits with what it made of them must
remove every item, or the write is undone. Here the race is made certain:
one leader reads a batch, the other applies and commits the same batch, then
the first tries to commit.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import open_store
from gateway.store.base import RowsChanged
from tests.conftest import incidents_of, leak_policy_with_rule, write_policies

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_fenced_statement_undoes_the_whole_transaction(tmp_path, pg_url, backend):
    url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'fence.db'}"
    store = open_store(url)
    await store.open()
    try:
        now = 1.0
        await store.execute(
            "INSERT INTO kv_state (key, value, updated_at) VALUES (?, ?, ?)", "a", "1", now
        )
        with pytest.raises(RowsChanged):
            await store.transaction(
                [
                    ("UPDATE kv_state SET value = ? WHERE key = ?", ("2", "a")),
                    ("DELETE FROM kv_state WHERE key = ?", ("missing",)),
                ],
                [None, 1],
            )
        row = await store.fetchone("SELECT value FROM kv_state WHERE key = ?", "a")
        assert row is not None and row["value"] == "1"
        counts = await store.transaction(
            [("UPDATE kv_state SET value = ? WHERE key = ?", ("3", "a"))], [1]
        )
        assert counts == [1]
    finally:
        await store.close()


async def test_two_leaders_at_once_count_a_storm_once(
    make_gateway, fake, policy_dir, monkeypatch, pg_url
):
    monkeypatch.setenv("GATEWAY_STORE_URL", pg_url)
    write_policies(policy_dir, leak_policy_with_rule())
    fake.script.text = "Sure. The launch codes are 0000."
    proxy_a, _, gw_a = await make_gateway(upstream=fake)
    _, _, gw_b = await make_gateway(upstream=fake)
    a, b = incidents_of(gw_a), incidents_of(gw_b)
    assert gw_a.leadership is not None and gw_b.leadership is not None
    assert gw_a.leadership.leader and not gw_b.leadership.leader
    # b's lock check has not run yet: it still believes it leads
    gw_b.leadership.leader = True
    await b._change_leader()
    # the background turns of both services wait: the race below is the only one
    async with a._turn, b._turn:
        for _ in range(5):
            await (await proxy_a.post(CHAT, json={"model": "m", "messages": []})).read()
        await a._forward()

        # b reads the batch, then waits while a applies and commits the same batch
        a_done = asyncio.Event()
        peek = b.signals.peek
        peeked: list[int] = []

        async def slow_peek(limit: int):
            batch = await peek(limit)
            peeked.append(len(batch))
            await a_done.wait()
            return batch

        b.signals.peek = slow_peek  # type: ignore[method-assign]
        b_turn = asyncio.create_task(b._apply_signals())
        await asyncio.sleep(0.1)
        await a._apply_signals()
        a_done.set()
        await b_turn
    assert peeked[0] == 5

    rows = await gw_a.store.fetchall("SELECT breach_count FROM incidents WHERE rule_id = 'leaks'")
    assert [r["breach_count"] for r in rows] == [5]
    # b's write was undone and b read the book again: what a wrote, not a second count
    [incident] = b.book.active.values()
    assert incident.breach_count == 5
    assert await b.signals.depth() == 0


async def test_an_action_nobody_leads_for_is_withdrawn_not_left_queued(
    make_gateway, fake, policy_dir, monkeypatch, pg_url
):
    from gateway.errors import LeaderUnavailable
    from gateway.incidents import service as service_module

    monkeypatch.setenv("GATEWAY_STORE_URL", pg_url)
    monkeypatch.setattr(service_module, "COMMAND_TIMEOUT", 0.5)
    write_policies(policy_dir, leak_policy_with_rule())
    fake.script.text = "Sure. The launch codes are 0000."
    proxy, _, gw = await make_gateway(upstream=fake)
    svc = incidents_of(gw)
    await (await proxy.post(CHAT, json={"model": "m", "messages": []})).read()
    await svc.settle()
    [incident] = svc.book.active.values()
    # this process stops leading, and no other process exists to take over
    assert gw.leadership is not None
    await gw.leadership.stop()
    await svc._change_leader()
    with pytest.raises(LeaderUnavailable, match="not applied"):
        await svc.acknowledge(incident.id, "rita")
    assert await svc.commands.depth() == 0
    row = await gw.store.fetchone("SELECT state FROM incidents WHERE id = ?", incident.id)
    assert row is not None and row["state"] == "open"


async def test_a_queued_action_is_applied_once_by_the_leader(
    make_gateway, fake, policy_dir, monkeypatch, pg_url
):
    monkeypatch.setenv("GATEWAY_STORE_URL", pg_url)
    write_policies(policy_dir, leak_policy_with_rule())
    fake.script.text = "Sure. The launch codes are 0000."
    proxy_a, _, gw_a = await make_gateway(upstream=fake)
    _, _, gw_b = await make_gateway(upstream=fake)
    a, b = incidents_of(gw_a), incidents_of(gw_b)
    await (await proxy_a.post(CHAT, json={"model": "m", "messages": []})).read()
    await a.settle()
    [incident] = a.book.active.values()
    # b does not lead: its actions go through the queue to a, which applies them
    asked = asyncio.create_task(b.note(incident.id, "rita", "looking"))
    while not asked.done():
        await a.settle()
        await asyncio.sleep(0.05)
    note = await asked
    assert note.id == incident.id
    events = await gw_a.store.fetchall(
        "SELECT kind FROM incident_events WHERE incident_id = ? AND kind = 'note'", incident.id
    )
    assert len(events) == 1
    assert await a.commands.depth() == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_hand_over_sent_again_after_it_was_applied_is_not_applied_twice(
    tmp_path, pg_url, backend
):
    from gateway.store.queue import SharedQueue

    url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'queue.db'}"
    store = open_store(url)
    await store.open()
    try:
        queue = SharedQueue(store, "incidents")
        sent = queue.statements([{"r": 1}, {"r": 2}])
        await store.transaction(sent)
        batch = await queue.peek(10)
        assert [body for _, body in batch] == [{"r": 1}, {"r": 2}]
        ids = [item_id for item_id, _ in batch]
        await store.transaction(queue.removal(ids), [len(ids)])
        queue.removed(ids)
        # the sender never heard its commit, and sends the same items again
        await store.transaction(sent)
        assert await queue.peek(10) == []
        assert await queue.depth() == 0
        # a second leader marking them again changes nothing, and is fenced off
        with pytest.raises(RowsChanged):
            await store.transaction(queue.removal(ids), [len(ids)])
    finally:
        await store.close()
