"""Several gateway processes sharing one store: change notices, policy reloads,
reviews and the incident outbox.

The broadcast and outbox tests run against the real PostgreSQL (and SQLite
where the backend matters); the end-to-end tests start two real gateway
processes on one PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import Incidents
from gateway.events import EventBus
from gateway.incidents.metrics import IncidentMetrics
from gateway.incidents.outbox import Outbox
from gateway.policy.reload import PolicyHolder
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.broadcast import LocalBroadcast, PostgresBroadcast, open_broadcast
from gateway.store.postgres import PostgresStore
from tests.conftest import (
    ADMIN_TOKEN,
    PG_DSN,
    POLICIES,
    REVIEWER_TOKEN,
    drop_schemas,
    write_policies,
)
from tests.gateway_process import GatewayProcess, free_port, start_gateway, write_config
from tests.test_review_api import REVIEW_POLICIES, SAUCE
from tests.test_sinks import HOOK_SECRET, RULES, FakeSinks

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
REVIEWER = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
CLIENT = {"authorization": "Bearer sk-shared-client"}
CHAT = "/v1/chat/completions"
TOKENS = (
    f"- {{name: root, token: {ADMIN_TOKEN}, roles: [admin]}}\n"
    f"- {{name: rita, token: {REVIEWER_TOKEN}, roles: [reviewer]}}\n"
)
# a notice, or nothing, must explain what another process does within this
NOTICE_DEADLINE = 2.0


async def until(check: Callable[[], Any], deadline: float, what: str) -> None:
    """Wait until ``check()``, awaited if need be, is truthy; fail past ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def schemas():
    """Make fresh PostgreSQL schema names; every one is dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t_{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    await drop_schemas(*made)


@pytest.fixture
async def broadcasts():
    """Open a store and its started broadcast per call; all stopped and closed afterwards."""
    opened: list[tuple[Store, Any]] = []

    async def make(schema: str, setup: Callable[[Any], None] = lambda _b: None):
        store = PostgresStore(f"{PG_DSN}?schema={schema}")
        await store.open()
        broadcast = open_broadcast(store)
        setup(broadcast)
        await broadcast.start()
        opened.append((store, broadcast))
        return broadcast

    yield make
    for store, broadcast in opened:
        await broadcast.stop()
        await store.close()


def listen(heard: list[str], channel: str = "policies") -> Callable[[Any], None]:
    """A broadcast setup that notes each payload heard on ``channel`` in ``heard``."""

    async def hear(payload: str) -> None:
        heard.append(payload)

    return lambda broadcast: broadcast.subscribe(channel, hear)


# -- the broadcast ----------------------------------------------------------------------------
async def test_open_broadcast_follows_the_store(tmp_path):
    assert isinstance(open_broadcast(open_store(f"sqlite:///{tmp_path}/g.db")), LocalBroadcast)
    assert isinstance(open_broadcast(open_store(f"{PG_DSN}?schema=x")), PostgresBroadcast)


async def test_notice_reaches_the_others_and_never_its_sender(schemas, broadcasts):
    schema = schemas()
    heard_a: list[str] = []
    heard_b: list[str] = []
    a = await broadcasts(schema, listen(heard_a))
    b = await broadcasts(schema, listen(heard_b))
    assert a.listening and b.listening
    assert a.origin != b.origin
    await a.publish("policies", "rev-1")
    await until(lambda: heard_b == ["rev-1"], NOTICE_DEADLINE, "b hears a's notice")
    await b.publish("policies", "rev-2")
    await until(lambda: heard_a == ["rev-2"], NOTICE_DEADLINE, "a hears b's notice")
    # notices arrive in commit order: had a heard its own rev-1, it would be first
    assert heard_a == ["rev-2"] and heard_b == ["rev-1"]


async def test_a_channel_subscribed_while_listening_is_heard(schemas, broadcasts):
    schema = schemas()
    a, b = await broadcasts(schema), await broadcasts(schema)
    heard: list[str] = []
    listen(heard, "reviews")(b)

    async def heard_it() -> bool:
        # the LISTEN goes out in the background: a notice before it is not heard
        await a.publish("reviews", "item-1")
        await asyncio.sleep(0.1)
        return bool(heard)

    await until(heard_it, NOTICE_DEADLINE, "the late channel is heard")
    assert set(heard) == {"item-1"}


async def test_schemas_do_not_hear_each_other(schemas, broadcasts):
    one, two = schemas(), schemas()
    heard_b: list[str] = []
    heard_c: list[str] = []
    a, b = await broadcasts(one), await broadcasts(one, listen(heard_b))
    c, d = await broadcasts(two, listen(heard_c)), await broadcasts(two)
    assert all(x.listening for x in (a, b, c, d))
    await a.publish("policies", "schema-one")
    await until(lambda: heard_b == ["schema-one"], NOTICE_DEADLINE, "same schema hears")
    await d.publish("policies", "schema-two")
    await until(lambda: heard_c == ["schema-two"], NOTICE_DEADLINE, "other schema hears its own")
    assert heard_c == ["schema-two"] and heard_b == ["schema-one"]


async def test_a_killed_listener_reconnects_and_heals(schemas, broadcasts):
    schema = schemas()
    heals: list[float] = []
    heard: list[str] = []

    async def heal() -> None:
        heals.append(time.time())

    def setup(broadcast) -> None:
        listen(heard)(broadcast)
        # the timer is far off: only connecting can run the heal in this test
        broadcast.every(300, heal)

    a = await broadcasts(schema)
    b = await broadcasts(schema, setup)
    await until(lambda: len(heals) == 1, 5, "heal after the first connect")
    pid = b.listener_pid
    assert pid is not None
    conn = await asyncpg.connect(PG_DSN)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    await until(lambda: len(heals) == 2, 10, "heal after the reconnect")
    assert b.listening and b.listener_pid not in (None, pid)
    await a.publish("policies", "after")
    await until(lambda: heard == ["after"], NOTICE_DEADLINE, "notices flow again")


async def test_an_unreachable_server_neither_blocks_nor_raises():
    # nothing listens on this port: start gives up waiting, publish logs
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    broadcast = PostgresBroadcast(store)
    broadcast.start_wait = 0.5
    heard: list[str] = []
    listen(heard)(broadcast)
    await broadcast.start()
    try:
        assert not broadcast.listening
        await broadcast.publish("policies", "lost")
        assert heard == []
    finally:
        await broadcast.stop()
    with pytest.raises(ValueError):
        await broadcast.publish("Not A Channel", "")


async def test_local_broadcast_heals_on_its_timer_and_tells_nobody():
    broadcast = LocalBroadcast()
    heard: list[str] = []
    listen(heard)(broadcast)
    heals: list[float] = []

    async def heal() -> None:
        heals.append(time.time())

    broadcast.every(0.05, heal)
    await broadcast.start()
    try:
        await broadcast.publish("policies", "x")
        await until(lambda: len(heals) >= 2, 2, "the heal timer runs")
        assert heard == []
    finally:
        await broadcast.stop()
    count = len(heals)
    await asyncio.sleep(0.15)
    assert len(heals) == count, "heals stop with the broadcast"


# -- the outbox, two senders on one store -------------------------------------------------------
class Receiver:
    """A webhook receiver that notes deliveries and whether a group ever had two in flight."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.in_flight: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self.failing = False
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        group = body["incident"]["dedup_key"]
        if self.in_flight[group]:
            self.overlaps.append(body["id"])
        self.in_flight[group] += 1
        try:
            await asyncio.sleep(0.01)
            if self.failing:
                return web.Response(status=503)
            self.delivered.append(body["id"])
            return web.Response(status=204)
        finally:
            self.in_flight[group] -= 1


@pytest.fixture
async def receiver(aiohttp_server, monkeypatch):
    monkeypatch.setenv("SHARED_HOOK_SECRET", HOOK_SECRET)
    recv = Receiver()
    server = await aiohttp_server(recv.app)
    recv.url = str(server.make_url("/hook"))
    return recv


def outbox_config(url: str) -> Incidents:
    return Incidents.model_validate(
        {
            "sinks": [
                {"name": "hook", "type": "webhook", "url": url, "secret_env": "SHARED_HOOK_SECRET"}
            ],
            "outbox": {"base_delay": 0.01, "max_delay": 0.05},
        }
    )


async def insert_events(store: Store, groups: int, per_group: int) -> list[str]:
    """Outbox rows as the incident book writes them: ``groups`` keys, in order within each."""
    now = time.time()
    ids, rows = [], []
    ord_ = int(now * 1e6)
    for seq in range(per_group):
        for g in range(groups):
            ord_ += 1
            delivery_id = f"inc{g}.{seq}.hook"
            payload = {
                "event": "note",
                "ts": now,
                "actor": "test",
                "message": f"event {seq}",
                "url": None,
                "seq": seq,
                "delivery_id": delivery_id,
                "incident": {"id": f"inc{g}", "dedup_key": f"key-{g}"},
            }
            rows.append(
                (delivery_id, f"inc{g}", seq, f"key-{g}", ord_, "hook", "note", json.dumps(payload))
                + (now, now)
            )
            ids.append(delivery_id)
    await store.executemany(
        "INSERT INTO incident_outbox (id, incident_id, seq, dedup_key, ord, sink, event, "
        "payload, created_at, attempts, next_attempt_at, dead) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0)",
        rows,
    )
    return ids


@pytest.fixture
async def two_senders(store_url, receiver):
    """Two outboxes, each on a store of its own, as two processes would have."""
    stores = [open_store(store_url), open_store(store_url)]
    for store in stores:
        await store.open()
    cfg = outbox_config(receiver.url)
    boxes = [Outbox(s, cfg, IncidentMetrics(CollectorRegistry())) for s in stores]
    yield boxes
    for box in boxes:
        await box.close()
    for store in stores:
        await store.close()


async def test_two_senders_deliver_each_event_once_and_in_order(two_senders, receiver):
    a, b = two_senders
    ids = await insert_events(a.store, groups=6, per_group=5)
    sent = {id(a): 0, id(b): 0}

    async def drain(box: Outbox) -> None:
        while await box.pending():
            sent[id(box)] += await box.deliver_due()
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(drain(a), drain(b)), 60)
    assert Counter(receiver.delivered) == Counter(ids), "every event exactly once"
    assert receiver.overlaps == [], "two events of one group were in flight at once"
    for g in range(6):
        mine = [i for i in receiver.delivered if i.startswith(f"inc{g}.")]
        assert mine == [f"inc{g}.{seq}.hook" for seq in range(5)]
    assert sent[id(a)] + sent[id(b)] == len(ids)


async def test_a_leased_group_is_skipped_until_the_lease_runs_out(two_senders, receiver):
    a, b = two_senders
    await insert_events(a.store, groups=2, per_group=2)
    token_a, claimed = await a.claim()
    assert sorted(r["id"] for r in claimed) == ["inc0.0.hook", "inc1.0.hook"]
    # both heads are a's: b takes neither them nor the rows behind them
    assert (await b.claim())[1] == []
    # a dies mid-delivery; once its lease has run out, b takes the heads over
    await a.store.execute(
        "UPDATE incident_outbox SET claimed_until = ? WHERE claimed_by = ?", 0.0, token_a
    )
    token_b, taken = await b.claim()
    assert sorted(r["id"] for r in taken) == ["inc0.0.hook", "inc1.0.hook"]
    # a, back from the dead, fails: its outcome must not clear b's lease or count a try
    receiver.failing = True
    assert not await a._deliver(claimed[0], token_a)
    row = await a.store.fetchone(
        "SELECT attempts, claimed_by FROM incident_outbox WHERE id = ?", claimed[0]["id"]
    )
    assert row == {"attempts": 0, "claimed_by": token_b}
    receiver.failing = False
    assert await b._deliver(taken[0], token_b)
    assert (
        await b.store.fetchone("SELECT id FROM incident_outbox WHERE id = ?", taken[0]["id"])
        is None
    )


async def test_a_failed_try_frees_the_row_for_any_sender(two_senders, receiver):
    a, b = two_senders
    await insert_events(a.store, groups=1, per_group=2)
    receiver.failing = True
    assert await a.deliver_due() == 0
    row = await a.store.fetchone(
        "SELECT attempts, claimed_until, claimed_by, last_error FROM incident_outbox "
        "WHERE id = 'inc0.0.hook'"
    )
    assert row == {
        "attempts": 1,
        "claimed_until": None,
        "claimed_by": None,
        "last_error": "HTTP 503",
    }
    receiver.failing = False
    await until(lambda: b.deliver_due(now=time.time() + 1), 5, "b sends the retry")
    assert receiver.delivered == ["inc0.0.hook"]


# -- two gateway processes on one PostgreSQL schema -----------------------------------------------
async def start_pair(
    tmp_path: Path,
    upstream: str,
    schema: str,
    policies: Path,
    extra: str = "",
    env: dict[str, str] | None = None,
) -> tuple[GatewayProcess, GatewayProcess]:
    procs = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        proxy_port, admin_port = free_port(), free_port()
        config = write_config(
            home,
            upstream,
            proxy_port,
            admin_port,
            tokens=TOKENS,
            store_url=f"{PG_DSN}?schema={schema}",
            policies=str(policies),
            extra=extra,
        )
        try:
            procs.append(await start_gateway(config, admin_port, proxy_port, env=env))
        except BaseException:
            for proc in procs:
                await proc.stop()
            raise
    return procs[0], procs[1]


async def decision(http: aiohttp.ClientSession, proxy: str) -> str:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{proxy}{CHAT}", json=body, headers=CLIENT) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["x-governance-decision"]


@pytest.mark.slow
async def test_a_reload_on_one_process_is_in_force_on_the_other(tmp_path, fake, schemas):
    policies = tmp_path / "policies"
    write_policies(policies, POLICIES)
    fake.script.text = "A note about zebras."
    # neither watches its files in time, nor heals in time: only a notice explains a change
    extra = "reload_interval: 60\nstate: {reconcile_interval: 300}\n"
    a, b = await start_pair(tmp_path, fake.url, schemas(), policies, extra)
    try:
        async with aiohttp.ClientSession() as http:
            assert await decision(http, b.proxy) == "allow"
            write_policies(
                policies,
                POLICIES
                + '  - {id: no-zebras, kind: phrases, phrases: ["zebras"], action: block}\n',
            )
            async with http.post(f"{a.admin}/governance/v1/policies/reload", headers=ADMIN) as resp:
                reloaded = await resp.json()
                assert resp.status == 200 and reloaded["reloaded"], reloaded
            started = time.monotonic()
            await until(
                lambda: _blocks(http, b.proxy), NOTICE_DEADLINE, "b enforces what a reloaded"
            )
            assert time.monotonic() - started <= NOTICE_DEADLINE
            async with http.get(f"{b.admin}/governance/v1/policies", headers=ADMIN) as resp:
                assert (await resp.json())["revision"] == reloaded["revision"]
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def _blocks(http: aiohttp.ClientSession, proxy: str) -> bool:
    return await decision(http, proxy) == "block"


@pytest.mark.slow
async def test_held_on_one_process_approved_on_the_other(tmp_path, fake, schemas):
    policies = tmp_path / "policies"
    write_policies(policies, REVIEW_POLICIES)
    fake.script.text = SAUCE
    a, b = await start_pair(tmp_path, fake.url, schemas(), policies)
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "gpt-test", "messages": [{"role": "user", "content": "recipe?"}]}
            async with http.post(f"{a.proxy}{CHAT}", json=body, headers=CLIENT) as resp:
                assert resp.status == 200
                review_id = resp.headers["x-governance-review-id"]
            result_url = f"{a.proxy}/governance/v1/reviews/{review_id}/result"
            async with http.get(result_url, headers=CLIENT) as resp:
                assert (await resp.json())["status"] == "pending"
            item_url = f"{b.admin}/governance/v1/reviews/{review_id}"
            async with http.get(item_url, headers=REVIEWER) as resp:
                assert resp.status == 200, await resp.text()
                version = (await resp.json())["item"]["version"]
            async with http.post(
                f"{item_url}/approve", json={"version": version}, headers=REVIEWER
            ) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(result_url, headers=CLIENT) as resp:
                result = await resp.json()
            assert result["status"] == "approved", result
            assert result["response"]["choices"][0]["message"]["content"] == SAUCE
    finally:
        await asyncio.gather(a.stop(), b.stop())


def deliveries(metrics: str, outcome: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_incident_deliveries_total{") and f'outcome="{outcome}"' in line
    )


@pytest.mark.slow
async def test_outbox_events_reach_the_sink_once_with_two_senders(
    tmp_path, fake, schemas, aiohttp_server
):
    sinks = FakeSinks(hook_secret=HOOK_SECRET)
    server = await aiohttp_server(sinks.app)
    hook = str(server.make_url("/hook"))
    policies = tmp_path / "policies"
    write_policies(policies, RULES)
    fake.script.text = "Sure, the launch codes are 1234."
    schema = schemas()
    extra = f"""\
        incidents:
          tick: 0.1
          sinks:
            - {{name: hook, type: webhook, url: "{hook}", secret_env: SHARED_HOOK_SECRET}}
            - {{name: hook2, type: webhook, url: "{hook}", secret_env: SHARED_HOOK_SECRET}}
          outbox: {{base_delay: 0.05, max_delay: 0.3, poll_interval: 0.05}}
        """
    sinks.down = True
    a, b = await start_pair(
        tmp_path, fake.url, schema, policies, extra, env={"SHARED_HOOK_SECRET": HOOK_SECRET}
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def admin_post(path: str) -> None:
                async with http.post(f"{a.admin}{path}", headers=ADMIN, json={}) as resp:
                    assert resp.status == 200, await resp.text()

            async def incidents() -> list[dict]:
                async with http.get(f"{a.admin}/governance/v1/incidents", headers=ADMIN) as resp:
                    return (await resp.json())["incidents"]

            async def metrics(proc: GatewayProcess) -> str:
                async with http.get(f"{proc.admin}/metrics") as resp:
                    return await resp.text()

            # two incidents of one key, one after the other: the second's events queue
            # behind the first's in each sink's group
            for _ in range(2):
                assert await decision(http, a.proxy) == "block"
                await until(lambda: _any_open(incidents), 10, "the breach opened an incident")
                [open_one] = [i for i in await incidents() if i["state"] != "resolved"]
                base = f"/governance/v1/incidents/{open_one['id']}"
                await admin_post(f"{base}/acknowledge")
                await admin_post(f"{base}/resolved")

            # both senders are trying while the sink is down
            async def both_tried() -> bool:
                tried = [deliveries(await metrics(p), "retry") for p in (a, b)]
                return all(n > 0 for n in tried)

            await until(both_tried, 15, "both processes tried to deliver")
            sinks.down = False

            conn = await asyncpg.connect(PG_DSN)
            try:

                async def drained() -> bool:
                    left = await conn.fetchval(f'SELECT COUNT(*) FROM "{schema}".incident_outbox')
                    return left == 0

                await until(drained, 30, "the outbox drained")
            finally:
                await conn.close()
            delivered = [h["id"] for h in sinks.hooks]
            counts = Counter(delivered)
            assert counts and set(counts.values()) == {1}, counts
            assert sinks.rejected == []
            # in order within each sink and key: each incident's events by sequence, and the
            # first incident's events all before the second's
            for sink in ("hook", "hook2"):
                mine = [d for d in delivered if d.endswith(f".{sink}")]
                incident_order = list(dict.fromkeys(d.split(".")[0] for d in mine))
                assert len(incident_order) == 2
                for inc in incident_order:
                    seqs = [int(d.split(".")[1]) for d in mine if d.startswith(inc + ".")]
                    assert seqs == sorted(seqs) and len(seqs) >= 3, mine
                first = [i for i, d in enumerate(mine) if d.startswith(incident_order[0])]
                second = [i for i, d in enumerate(mine) if d.startswith(incident_order[1])]
                assert max(first) < min(second), mine
            sent = sum([deliveries(await metrics(p), "delivered") for p in (a, b)])
            assert sent == len(delivered)
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def _any_open(incidents: Callable[[], Awaitable[list[dict]]]) -> bool:
    return any(i["state"] != "resolved" for i in await incidents())


# -- policy reload notices, in one process ---------------------------------------------------
class Recording(LocalBroadcast):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, str]] = []

    async def publish(self, channel: str, payload: str = "") -> None:
        self.published.append((channel, payload))


async def test_a_swap_is_announced_and_a_heard_one_is_not(tmp_path):
    policies = tmp_path / "policies"
    write_policies(policies, POLICIES)
    broadcast = Recording()
    holder = PolicyHolder([str(policies)], events=EventBus())
    holder.share(broadcast, heal_every=300)
    first = holder.load_now().revision
    assert broadcast.published == []
    write_policies(policies, POLICIES + '  - {id: extra, kind: phrases, phrases: ["x"]}\n')
    assert await holder.reload()
    second = holder.serving.revision
    assert second != first and broadcast.published == [("policies", second)]
    # the revision this process already serves: nothing to do
    stamp = holder.last_reload
    await broadcast._dispatch("policies", second)
    assert holder.last_reload == stamp
    # another revision: the files are read again, and the reload is not announced back
    write_policies(policies, POLICIES)
    await broadcast._dispatch("policies", first)
    assert holder.serving.revision == first and holder.last_reload != stamp
    assert broadcast.published == [("policies", second)]


async def test_the_heal_reloads_only_changed_files(tmp_path):
    policies = tmp_path / "policies"
    write_policies(policies, POLICIES)
    holder = PolicyHolder([str(policies)], events=EventBus())
    holder.share(Recording(), heal_every=300)
    holder.load_now()
    stamp = holder.last_reload
    await holder._heal()
    assert holder.last_reload == stamp
    write_policies(policies, POLICIES + '  - {id: extra, kind: phrases, phrases: ["x"]}\n')
    await holder._heal()
    assert holder.last_reload != stamp and len(holder.serving.policies) == 4
