"""The review store on SQLite and on the real PostgreSQL (the ``store`` fixture runs both)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import Route, Settings
from gateway.contract.policy import ReviewOptions
from gateway.errors import ItemChanged, ReviewUnavailable
from gateway.events import EventBus
from gateway.records.review import HeldAnswer, HeldRequest, ReviewItem
from gateway.review.callbacks import Callbacks
from gateway.review.holds import Holds
from gateway.review.items import new_id
from gateway.review.metrics import ReviewMetrics
from gateway.review.store import ReviewStore
from gateway.severity import Severity
from gateway.store import open_store
from tests.test_records import HELD, SAUCE


def make_item(i: int = 0, **over) -> ReviewItem:
    now = time.time()
    item = {
        "id": new_id(),
        "decision_id": f"d{i}",
        "created_at": now + i,
        "updated_at": now,
        "state": "pending",
        "outcome": None,
        "route": "default",
        "protocol": "openai-chat",
        "path": "/v1/chat/completions",
        "model": "gpt-test",
        "stream": False,
        "policy": "hold-sauce",
        "policies": ["hold-sauce"],
        "severity": "high",
        "severity_rank": 2,
        "priority": 20,
        "sla_deadline": now + 3600 + i,
        "expires_at": now + 86400,
        "expire_action": "reject",
        "retain_until": now + 30 * 86400,
        "overdue": False,
        "escalations": 0,
        "assignee": None,
        "key_id": "key_abc",
        "tenant": None,
        "text_stored": True,
        "preview": "Our recipe uses…",
        "text_hash": "0" * 64,
        "request": {
            "method": "POST",
            "path": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hé <b>"}]},
        },
        "response": {"choices": [{"index": 0, "message": {"content": "secret sauce"}}]},
        "segments": {"0": "secret sauce"},
        "record": {
            "policies": [{"id": "hold-sauce", "status": "breach", "findings": [{"span": [0, 12]}]}],
            "segment_keys": ["0"],
        },
        "edited": None,
        "reason": None,
        "decided_by": None,
        "decided_at": None,
        "version": 1,
    }
    item.update(over)
    return ReviewItem.from_json(item)


@pytest.fixture
async def reviews(store):
    return ReviewStore(store)


async def test_insert_and_read_back(reviews):
    item = make_item()
    await reviews.insert(item)
    got = await reviews.get(item.id)
    assert got.segments == {"0": "secret sauce"}
    assert got.request["body"]["messages"][0]["content"] == "hé <b>"
    assert got.policies == ("hold-sauce",)
    assert got.stream is False and got.text_stored is True
    assert got.version == 1
    audit = await reviews.audit(item.id)
    assert [(a["actor"], a["action"]) for a in audit] == [("gateway", "held")]
    assert audit[0]["after_state"]["state"] == "pending"
    assert await reviews.get("missing") is None


async def test_change_bumps_version_and_audits(reviews):
    item = make_item()
    await reviews.insert(item)
    after = await reviews.change(item, actor="rita", action="claim", changes={"assignee": "rita"})
    assert after.version == 2
    stored = await reviews.get(item.id)
    assert stored.assignee == "rita" and stored.version == 2
    bumped = await reviews.change(
        stored,
        actor="system",
        action="overdue",
        changes={"priority": ("+", 10), "overdue": True, "escalations": ("+", 1)},
    )
    assert bumped.priority == 30
    stored = await reviews.get(item.id)
    assert stored.priority == 30 and stored.overdue is True and stored.escalations == 1
    audit = await reviews.audit(item.id)
    assert [a["action"] for a in audit] == ["held", "claim", "overdue"]
    assert audit[1]["before_state"]["assignee"] is None
    assert audit[1]["after_state"]["assignee"] == "rita"


async def test_stale_change_is_refused_without_audit(reviews):
    item = make_item()
    await reviews.insert(item)
    await reviews.change(item, actor="rita", action="claim", changes={"assignee": "rita"})
    with pytest.raises(ItemChanged) as err:
        await reviews.change(
            item,
            actor="bob",
            action="approve",
            changes={"state": "approved", "outcome": "approved"},
            callback={"url": "http://x/hook", "payload": {"a": 1}},
        )
    assert err.value.current.version == 2
    assert [a["action"] for a in await reviews.audit(item.id)] == ["held", "claim"]
    assert await reviews.callbacks_for(item.id) == []


async def test_concurrent_decisions_only_one_applies(reviews):
    item = make_item()
    await reviews.insert(item)

    async def decide(who: str, state: str):
        try:
            await reviews.change(
                item,
                actor=who,
                action=state,
                changes={"state": state, "outcome": state, "decided_by": who},
            )
            return who
        except ItemChanged:
            return None

    winners = await asyncio.gather(
        *[decide(f"r{i}", "approved" if i % 2 else "rejected") for i in range(8)]
    )
    won = [w for w in winners if w]
    assert len(won) == 1
    stored = await reviews.get(item.id)
    assert stored.decided_by == won[0] and stored.version == 2
    audit = await reviews.audit(item.id)
    assert [a["actor"] for a in audit] == ["gateway", won[0]]


async def test_decided_item_needs_pending_state(reviews):
    item = make_item()
    await reviews.insert(item)
    done = await reviews.change(
        item, actor="rita", action="reject", changes={"state": "rejected", "outcome": "rejected"}
    )
    with pytest.raises(ItemChanged):
        await reviews.change(done, actor="rita", action="approve", changes={"state": "approved"})
    # not every change needs the item open (none today, but the guard is optional)
    await reviews.change(
        done, actor="rita", action="note", changes={"reason": "x"}, require_state=None
    )


async def test_list_filters_sort_and_counts(reviews):
    now = time.time()
    a = make_item(0, severity="low", severity_rank=0, sla_deadline=now + 100)
    b = make_item(1, severity="critical", severity_rank=3, sla_deadline=now + 100)
    c = make_item(
        2, policy="bias", policies=["bias", "hold-sauce"], route="rag", sla_deadline=now - 5
    )
    d = make_item(3, state="approved", outcome="approved", decided_by="rita")
    for item in (a, b, c, d):
        await reviews.insert(item)
    pending, total = await reviews.list_items({"state": "pending"})
    assert total == 3
    # earliest deadline first; equal deadlines: most severe first
    assert [i.id for i in pending] == [c.id, b.id, a.id]
    # a listing carries no text
    assert not hasattr(pending[0], "segments") and not hasattr(pending[0], "request")
    by_policy, _ = await reviews.list_items({"state": "pending", "policy": "hold-sauce"})
    assert {i.id for i in by_policy} == {a.id, b.id, c.id}
    only_bias, _ = await reviews.list_items({"policy": "bias"})
    assert [i.id for i in only_bias] == [c.id]
    overdue, _ = await reviews.list_items({"overdue": True})
    assert [i.id for i in overdue] == [c.id]
    routed, _ = await reviews.list_items({"route": "rag"})
    assert [i.id for i in routed] == [c.id]
    unassigned, _ = await reviews.list_items({"assignee": "none", "state": "pending"})
    assert len(unassigned) == 3
    sev, _ = await reviews.list_items({"severity": "critical"})
    assert [i.id for i in sev] == [b.id]
    paged, total = await reviews.list_items({}, limit=2, offset=2)
    assert total == 4 and len(paged) == 2
    counts = await reviews.counts()
    assert counts["by_state"] == {"pending": 3, "approved": 1, "rejected": 0, "expired": 0}
    assert counts["overdue"] == 1
    assert counts["by_state_severity"]["pending"]["critical"] == 1


async def test_approval_rates_count_people_not_expiry(reviews):
    rows = [("approved", "rita"), ("approved", "rita"), ("rejected", "bob"), ("rejected", "system")]
    for i, (outcome, who) in enumerate(rows):
        await reviews.insert(
            make_item(
                i, state=outcome if who != "system" else "expired", outcome=outcome, decided_by=who
            )
        )
    rates = await reviews.approval_rates()
    assert rates == {
        "hold-sauce": {"approved": 2, "rejected": 1, "decided": 3, "approval_rate": round(2 / 3, 4)}
    }


async def test_purge_keeps_pending_and_audit(reviews):
    now = time.time()
    old = make_item(0, state="rejected", outcome="rejected", retain_until=now - 1)
    keep = make_item(1, retain_until=now - 1)
    for item in (old, keep):
        await reviews.insert(item)
    await reviews.comment(old.id, "rita", "gone soon")
    assert await reviews.purge(time.time()) == 1
    assert await reviews.get(old.id) is None
    assert await reviews.get(keep.id) is not None
    assert await reviews.comments(old.id) == []
    assert [a["action"] for a in await reviews.audit(old.id)] == ["held", "comment", "purged"]


async def test_callback_outbox(reviews):
    item = make_item()
    await reviews.insert(item)
    await reviews.change(
        item,
        actor="rita",
        action="approve",
        changes={"state": "approved", "outcome": "approved"},
        callback={"url": "http://hook", "payload": {"id": item.id}},
    )
    token, due = await reviews.due_callbacks(time.time() + 1)
    assert len(due) == 1 and due[0]["payload"] == {"id": item.id}
    # claimed: another sender, here or in another process, does not get it meanwhile
    assert (await reviews.due_callbacks(time.time() + 1))[1] == []
    # an outcome under a lease that is not ours is not recorded
    await reviews.callback_done(
        due[0]["id"], token="other", ok=False, attempts=1, next_at=0, error="x", give_up=True
    )
    assert (await reviews.callbacks_for(item.id))[0]["state"] == "due"
    await reviews.callback_done(
        due[0]["id"],
        token=token,
        ok=False,
        attempts=1,
        next_at=time.time() + 60,
        error="HTTP 500",
        give_up=False,
    )
    assert (await reviews.due_callbacks(time.time() + 1))[1] == []
    rows = await reviews.callbacks_for(item.id)
    assert rows[0]["state"] == "due" and rows[0]["last_error"] == "HTTP 500"
    # the retry, once due, is claimable again
    assert len((await reviews.due_callbacks(time.time() + 61))[1]) == 1


async def test_a_dead_senders_claim_lapses(reviews):
    item = make_item()
    await reviews.insert(item)
    await reviews.change(
        item,
        actor="rita",
        action="approve",
        changes={"state": "approved", "outcome": "approved"},
        callback={"url": "http://hook", "payload": {"id": item.id}},
    )
    _, first = await reviews.due_callbacks(time.time() + 1, lease=0.05)
    assert len(first) == 1
    await asyncio.sleep(0.1)
    _, again = await reviews.due_callbacks(time.time() + 1)
    assert [r["id"] for r in again] == [first[0]["id"]]


async def test_backend_is_what_the_fixture_says(store, store_url):
    # guards against both parametrized runs silently using one backend
    assert store.dialect == ("sqlite" if store_url.startswith("sqlite") else "postgresql")


async def test_whole_review_flow_on_each_backend(
    store_url, make_gateway, fake, monkeypatch, tmp_path
):
    """Hold, race two decisions, edit, poll: through the real gateway on this backend."""
    from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, write_policies
    from tests.test_review_api import CHAT, CLIENT_KEY, REVIEW_POLICIES, SAUCE, auth, chat

    write_policies(tmp_path / "policies", REVIEW_POLICIES)
    monkeypatch.setenv("GATEWAY_STORE_URL", store_url)
    fake.script.text = SAUCE
    proxy, admin, gw = await make_gateway(upstream=fake)
    assert gw.store.dialect == ("sqlite" if store_url.startswith("sqlite") else "postgresql")
    held = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    review_id = held.headers["x-governance-review-id"]
    base = f"/governance/v1/reviews/{review_id}"
    first, second = await asyncio.gather(
        admin.post(
            f"{base}/approve",
            json={"version": 1, "edited": {"0": "Edited text."}},
            headers=auth(REVIEWER_TOKEN),
        ),
        admin.post(
            f"{base}/reject", json={"version": 1, "reason": "no"}, headers=auth(ADMIN_TOKEN)
        ),
    )
    assert sorted([first.status, second.status]) == [200, 409]
    result = await (await admin.get(f"{base}/result", headers=auth(CLIENT_KEY))).json()
    if first.status == 200:
        assert result["status"] == "approved"
        assert result["response"]["choices"][0]["message"]["content"] == "Edited text."
    else:
        assert result == {**result, "status": "rejected", "reason": "no"}
    audit = await (await admin.get(f"{base}/audit", headers=auth(REVIEWER_TOKEN))).json()
    assert len(audit["audit"]) == 2


async def test_two_senders_deliver_each_callback_once_to_a_slow_receiver(
    reviews, aiohttp_server, monkeypatch
):
    """More callbacks are due than a slow receiver takes within one claim's lease."""
    deliveries: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        deliveries.append(request.headers["x-governance-delivery"])
        # answers within the timeout, but slowly
        await asyncio.sleep(0.6)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    url = str(server.make_url("/hook"))
    monkeypatch.setenv("REVIEW_HOOK_SECRET", "s3cret")
    settings = Settings(
        routes=[
            Route(
                name="default",
                upstream="http://up",
                review={"callback_url": url, "callback_secret_env": "REVIEW_HOOK_SECRET"},
            )
        ],
        review={"callback_timeout": 1.0},
    )
    count = 40
    for i in range(count):
        item = make_item(i)
        await reviews.insert(item)
        await reviews.change(
            item,
            actor="rita",
            action="approve",
            changes={"state": "approved", "outcome": "approved"},
            callback={"url": url, "payload": {"id": item.id}},
        )
    async with aiohttp.ClientSession() as http:
        senders = [
            Callbacks(
                settings, reviews, ReviewMetrics(CollectorRegistry()), EventBus(), lambda: http
            )
            for _ in range(2)
        ]
        running = [asyncio.create_task(s.run()) for s in senders]
        try:
            async with asyncio.timeout(60):
                while len(set(deliveries)) < count:
                    await asyncio.sleep(0.1)
            # a second send would start within a poll of the sender holding it
            await asyncio.sleep(1.5)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    repeated = sorted({d for d in deliveries if deliveries.count(d) > 1})
    assert len(deliveries) == count, f"{len(repeated)} callbacks sent more than once"
    assert not repeated


@pytest.mark.parametrize("keep_open", [False, True], ids=["new-connection", "open-connection"])
async def test_a_hold_on_a_hung_store_is_refused_in_bounds(keep_open, pg_relay):
    """The client of a held answer hears ``review-unavailable`` well before asyncpg gives up."""
    relay, url = pg_relay
    store = open_store(url)
    answer = HeldAnswer(
        decision=HELD,
        policy="hold-sauce",
        options=ReviewOptions(),
        severity=Severity.HIGH,
        policies=("hold-sauce",),
        request=HeldRequest("POST", "/v1/chat/completions", "", {}, {}),
        key_id=None,
        tenant=None,
        texts={"0": SAUCE},
        response=None,
    )
    try:
        await store.open()
        settings = Settings(routes=[Route(name="default", upstream="http://up")])
        metrics = ReviewMetrics(CollectorRegistry())
        holds = Holds(settings, ReviewStore(store), metrics, EventBus(), adapters=None)  # type: ignore[arg-type]
        assert (await holds.hold(answer)).review_id
        await relay.stall(keep_open=keep_open)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # a statement on a hung connection waits 30 s for asyncpg, a connect 60 s
        async with asyncio.timeout(40):
            with pytest.raises(ReviewUnavailable) as err:
                await holds.hold(answer)
        assert err.value.code == "review-unavailable"
        assert loop.time() - started < 25
    finally:
        await store.close()
