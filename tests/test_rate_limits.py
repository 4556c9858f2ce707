"""Per-key limits: requests a minute and streams in flight per client, shared through Redis.

Redis is the real server at 127.0.0.1:6379; every test writes under a key
prefix of its own and deletes only those keys. Redis "down" is a closed port.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway.config import KeyLimits, Route, Settings, State
from gateway.errors import ConfigError
from gateway.store.counters import Bucket, MemoryCounters, Slot
from gateway.store.redis_counters import RedisCounters
from tests.conftest import PG_DSN
from tests.fakes import FakeUpstream
from tests.gateway_process import free_port, start_gateway, write_config
from tests.test_proxy_basic import CHAT, chat_body

REDIS = "redis://127.0.0.1:6379/0"
MESSAGES = "/v1/messages"
KEY_A = "sk-test-client-a-0123456789"
KEY_B = "sk-test-client-b-9876543210"


def openai_key(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def anthropic_body(stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }


@pytest.fixture
async def redis_prefix():
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    client = Redis.from_url(REDIS)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def redis_keys(prefix: str) -> list[str]:
    client = Redis.from_url(REDIS, decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*")]
    finally:
        await client.aclose()


def closed_port_url() -> str:
    """A Redis URL nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


def state(redis: str | None, prefix: str = "gateway", down: str = "open") -> dict[str, Any]:
    return {"redis": redis, "redis_prefix": prefix, "redis_down": down}


def per_key(**limits: int) -> dict[str, Any]:
    return {"per_key": limits}


async def metric(admin, name: str) -> float:
    text = await (await admin.get("/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class GatedUpstream(FakeUpstream):
    """A fake upstream whose streams stop before their end until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def _stream(
        self, request: web.Request, events: list[bytes], terminator: bytes | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for data in events[:2]:
                await resp.write(data)
            await self.gate.wait()
            for data in events[2:]:
                await resp.write(data)
            if terminator:
                await resp.write(terminator)
            await resp.write_eof()
            self.finished_streams += 1
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return resp


@pytest.fixture
async def gated(aiohttp_server):
    upstream = GatedUpstream()
    server = await aiohttp_server(upstream.app)
    upstream.url = str(server.make_url("")).rstrip("/")
    return upstream


async def until(condition, seconds: float = 10.0, step: float = 0.05) -> None:
    async with asyncio.timeout(seconds):
        while not await condition():
            await asyncio.sleep(step)


# -- configuration ---------------------------------------------------------------------
def test_limits_are_off_by_default():
    settings = Settings(routes=[Route(name="r", upstream="http://up")])
    assert settings.limits.per_key == KeyLimits()
    assert not settings.limits.per_key.active
    assert settings.state.redis is None and settings.state.redis_down == "open"


def test_a_redis_url_must_be_redis(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "routes: [{name: r, upstream: 'http://up'}]\n"
        "state:\n  redis: 'http://user:hunter2@cache:6379'\n"
    )
    from gateway.config import load_settings

    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = "\n".join(err.value.errors)
    assert "state.redis" in text and "redis://" in text
    # the URL may carry a password: it is not repeated back
    assert "hunter2" not in text


def test_the_environment_names_redis_over_the_file(monkeypatch):
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://cache:6379/2")
    assert State(redis="redis://other:6379/0").redis_url() == "redis://cache:6379/2"
    monkeypatch.delenv("GATEWAY_REDIS_URL")
    assert State(redis="redis://other:6379/0").redis_url() == "redis://other:6379/0"


# -- the counters themselves -------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
async def counters(request, redis_prefix):
    if request.param == "memory":
        yield MemoryCounters(), "mem"
        return
    shared = RedisCounters(REDIS)
    yield shared, redis_prefix
    await shared.close()


async def test_a_bucket_gives_its_capacity_then_says_how_long_to_wait(counters):
    c, prefix = counters
    bucket = Bucket(f"{prefix}:{{a}}:rpm", 3, 60.0)
    assert [(await c.take(bucket, None)).ok for _ in range(3)] == [True, True, True]
    refused = await c.take(bucket, None)
    assert not refused.ok and refused.refused == "bucket"
    # one token comes back every 60 / 3 seconds
    assert 0 < refused.wait <= 20.0
    # another client's bucket is its own
    assert (await c.take(Bucket(f"{prefix}:{{b}}:rpm", 3, 60.0), None)).ok


async def test_slots_are_given_back_and_a_forgotten_one_frees_itself(counters):
    c, prefix = counters
    key = f"{prefix}:{{a}}:streams"
    first, second = Slot(key, 1, "p1:1", 60.0), Slot(key, 1, "p1:2", 60.0)
    assert (await c.take(None, first)).ok
    refused = await c.take(None, second)
    assert not refused.ok and refused.refused == "slot"
    await c.give_back(first)
    assert (await c.take(None, second)).ok
    await c.give_back(second)
    # a holder that died never gives its slot back: its short lease frees it
    leaked = Slot(key, 1, "dead:1", 0.2)
    assert (await c.take(None, leaked)).ok
    await until(lambda: _took(c, Slot(key, 1, "p2:1", 60.0)))


async def _took(c, slot: Slot) -> bool:
    return (await c.take(None, slot)).ok


async def test_a_refused_slot_takes_no_token_from_the_bucket(counters):
    c, prefix = counters
    bucket = Bucket(f"{prefix}:{{a}}:rpm", 2, 60.0)
    key = f"{prefix}:{{a}}:streams"
    assert (await c.take(bucket, Slot(key, 1, "x:1", 60.0))).ok
    refused = await c.take(bucket, Slot(key, 1, "x:2", 60.0))
    assert refused.refused == "slot"
    # the refused stream did not spend the second request of the minute
    assert (await c.take(bucket, None)).ok
    assert (await c.take(bucket, None)).refused == "bucket"


async def test_a_down_redis_fails_fast_and_is_skipped_for_a_while():
    down = RedisCounters(closed_port_url(), cooldown=60.0)
    try:
        with pytest.raises(ConnectionError):
            await down.take(Bucket("x:{a}:rpm", 1, 60.0), None)
        assert down.down and down.last_error
        # skipped, not tried: the message says so
        with pytest.raises(ConnectionError, match="skipped"):
            await down.take(Bucket("x:{a}:rpm", 1, 60.0), None)
        with pytest.raises(ConnectionError, match="skipped"):
            await down.ping()
    finally:
        await down.close()


async def test_redis_is_tried_again_after_the_cooldown(redis_prefix):
    shared = RedisCounters(REDIS, cooldown=0.05)
    try:
        # as if a command had just failed
        shared._failed(ConnectionRefusedError())
        assert shared.down
        await until(lambda: _pings(shared))
        assert not shared.down and shared.last_error is None
    finally:
        await shared.close()


async def _pings(shared: RedisCounters) -> bool:
    try:
        await shared.ping()
    except ConnectionError:
        return False
    return True


async def test_a_renewal_after_the_give_back_does_not_hold_the_slot_again(redis_prefix):
    shared = RedisCounters(REDIS)
    try:
        key = f"{redis_prefix}:{{a}}:streams"
        ended = Slot(key, 1, "p1:1", 60.0)
        assert (await shared.take(None, ended)).ok
        # the renewal round picked the slot up just before its stream ended
        await shared.give_back(ended)
        await shared.renew([ended])
        assert (await shared.take(None, Slot(key, 1, "p1:2", 60.0))).ok
    finally:
        await shared.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("redis", [None, "down"], ids=["memory", "redis-down-open"])
async def test_streams_counted_in_memory_stay_counted_however_long_they_run(redis):
    from gateway.errors import RateLimited
    from gateway.observability.metrics import Metrics
    from gateway.proxy.ratelimit import LEASE, KeyLimiter

    url = closed_port_url() if redis else None
    settings = Settings(
        routes=[Route(name="r", upstream="http://up")],
        limits=per_key(concurrent_streams=2),
        state=state(url, down="open"),
    )
    limiter = KeyLimiter(settings, Metrics())
    clock = FakeClock()
    limiter.local = MemoryCounters(clock=clock)
    route, headers = settings.routes[0], openai_key(KEY_A)
    try:
        first = await limiter.admit(route, headers, stream=True)
        second = await limiter.admit(route, headers, stream=True)
        assert first is not None and second is not None
        # both streams still run, far past any lease, and nothing renews memory slots
        clock.now += LEASE * 100
        with pytest.raises(RateLimited):
            await limiter.admit(route, headers, stream=True)
        await limiter.release(first)
        third = await limiter.admit(route, headers, stream=True)
        with pytest.raises(RateLimited):
            await limiter.admit(route, headers, stream=True)
        await limiter.release(second)
        await limiter.release(third)
        assert limiter.local._held == {}
    finally:
        await limiter.stop()


# -- through the gateway --------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def backend(request, redis_prefix) -> dict[str, Any]:
    """``state`` settings: per process in memory, or shared through Redis."""
    if request.param == "memory":
        return state(None)
    return state(REDIS, redis_prefix)


async def test_requests_over_the_minute_get_429_in_openai_shape(make_gateway, fake, backend):
    proxy, admin, _ = await make_gateway(
        upstream=fake, limits=per_key(requests_per_minute=3), state=backend
    )
    for _ in range(3):
        resp = await proxy.post(CHAT, json=chat_body(), headers=openai_key(KEY_A))
        assert resp.status == 200, await resp.text()
    resp = await proxy.post(CHAT, json=chat_body(), headers=openai_key(KEY_A))
    assert resp.status == 429
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-governance-error-code"] == "rate-limited"
    error = (await resp.json())["error"]
    assert error["code"] == "rate-limited" and error["type"] == "requests"
    assert "3 requests a minute" in error["message"]
    assert len(fake.requests) == 3, "a refused request never reaches the upstream"
    # another key has its own minute
    resp = await proxy.post(CHAT, json=chat_body(), headers=openai_key(KEY_B))
    assert resp.status == 200
    assert await metric(admin, 'gateway_shed_total{reason="key-requests"}') == 1


async def test_requests_over_the_minute_get_429_in_anthropic_shape(make_gateway, fake, backend):
    proxy, _, _ = await make_gateway(
        upstream=fake, limits=per_key(requests_per_minute=2), state=backend
    )
    headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}
    for _ in range(2):
        resp = await proxy.post(MESSAGES, json=anthropic_body(), headers=headers)
        assert resp.status == 200, await resp.text()
    resp = await proxy.post(MESSAGES, json=anthropic_body(stream=True), headers=headers)
    assert resp.status == 429
    assert int(resp.headers["retry-after"]) >= 1
    body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate-limited"


async def test_the_tenant_names_a_client_only_without_a_key(make_gateway, fake):
    proxy, _, _ = await make_gateway(upstream=fake, limits=per_key(requests_per_minute=1))
    tenant = {"x-governance-tenant": "team-a"}
    assert (await proxy.post(CHAT, json=chat_body(), headers=tenant)).status == 200
    assert (await proxy.post(CHAT, json=chat_body(), headers=tenant)).status == 429
    other = {"x-governance-tenant": "team-b"}
    assert (await proxy.post(CHAT, json=chat_body(), headers=other)).status == 200
    # a key's allowance is not split by sending another tenant with it
    keyed = openai_key(KEY_A)
    assert (await proxy.post(CHAT, json=chat_body(), headers=keyed | tenant)).status == 200
    assert (await proxy.post(CHAT, json=chat_body(), headers=keyed | other)).status == 429


async def test_counters_in_redis_are_named_by_a_hash_never_the_key(
    make_gateway, fake, redis_prefix
):
    proxy, _, _ = await make_gateway(
        upstream=fake,
        limits=per_key(requests_per_minute=5, concurrent_streams=2),
        state=state(REDIS, redis_prefix),
    )
    assert (await proxy.post(CHAT, json=chat_body(), headers=openai_key(KEY_A))).status == 200
    keys = await redis_keys(redis_prefix)
    assert len(keys) == 1 and keys[0].endswith(":rpm")
    assert KEY_A not in keys[0] and KEY_A.removeprefix("sk-") not in keys[0]


async def test_a_route_of_its_own_limits_counts_apart(make_gateway, fake, backend):
    routes = [
        Route(
            name="tight", upstream=fake.url, models=["tight-*"], per_key={"requests_per_minute": 1}
        ),
        Route(name="default", upstream=fake.url),
    ]
    proxy, _, _ = await make_gateway(routes, limits=per_key(requests_per_minute=2), state=backend)
    key = openai_key(KEY_A)
    tight = chat_body(model="tight-1")
    assert (await proxy.post(CHAT, json=tight, headers=key)).status == 200
    assert (await proxy.post(CHAT, json=tight, headers=key)).status == 429
    # the other route has its own, larger allowance, untouched by the tight one
    assert (await proxy.post(CHAT, json=chat_body(), headers=key)).status == 200
    assert (await proxy.post(CHAT, json=chat_body(), headers=key)).status == 200
    assert (await proxy.post(CHAT, json=chat_body(), headers=key)).status == 429


async def test_ungoverned_paths_count_against_the_minute_too(make_gateway, fake):
    proxy, _, _ = await make_gateway(upstream=fake, limits=per_key(requests_per_minute=1))
    key = openai_key(KEY_A)
    assert (await proxy.get("/v1/models", headers=key)).status == 200
    resp = await proxy.get("/v1/models", headers=key)
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "rate-limited"


async def test_streams_over_the_limit_get_429_and_the_slot_frees_at_the_end(
    make_gateway, gated, backend
):
    proxy, admin, gw = await make_gateway(
        upstream=gated, limits=per_key(concurrent_streams=1), state=backend
    )
    key = openai_key(KEY_A)
    first = asyncio.create_task(proxy.post(CHAT, json=chat_body(stream=True), headers=key))
    await until(lambda: _seen(gated, 1))
    refused = await proxy.post(CHAT, json=chat_body(stream=True), headers=key)
    assert refused.status == 429
    assert refused.headers["retry-after"] == str(gw.settings.limits.retry_after)
    assert (await refused.json())["error"]["code"] == "rate-limited"
    # a non-streamed request of the same client is not a stream: it passes
    gated.gate.set()
    assert (await proxy.post(CHAT, json=chat_body(), headers=key)).status == 200
    # another client streams meanwhile
    other = await proxy.post(CHAT, json=chat_body(stream=True), headers=openai_key(KEY_B))
    assert other.status == 200
    await other.read()
    resp = await first
    assert resp.status == 200
    assert b"[DONE]" in await resp.read()

    async def admitted() -> bool:
        again = await proxy.post(CHAT, json=chat_body(stream=True), headers=key)
        await again.read()
        return again.status == 200

    await until(admitted)
    assert await metric(admin, 'gateway_shed_total{reason="key-streams"}') == 1


async def test_a_stream_that_fails_gives_its_slot_back(make_gateway, fake, backend):
    proxy, _, _ = await make_gateway(
        upstream=fake, limits=per_key(concurrent_streams=1), state=backend
    )
    key = openai_key(KEY_A)
    fake.script.fault = "500"
    for _ in range(3):
        resp = await proxy.post(CHAT, json=chat_body(stream=True), headers=key)
        # the failed stream's slot is free again for the next one
        assert resp.status == 502, await resp.text()
    fake.script.fault = ""

    async def admitted() -> bool:
        resp = await proxy.post(CHAT, json=chat_body(stream=True), headers=key)
        await resp.read()
        return resp.status == 200

    await until(admitted)


# -- Redis down ------------------------------------------------------------------------------
async def test_redis_down_in_open_mode_limits_each_process_alone(make_gateway, fake):
    proxy, admin, _ = await make_gateway(
        upstream=fake,
        limits=per_key(requests_per_minute=2),
        state=state(closed_port_url(), down="open"),
    )
    key = openai_key(KEY_A)
    assert (await proxy.post(CHAT, json=chat_body(), headers=key)).status == 200
    assert (await proxy.post(CHAT, json=chat_body(), headers=key)).status == 200
    # still limited, by this process's own count
    resp = await proxy.post(CHAT, json=chat_body(), headers=key)
    assert resp.status == 429 and "retry-after" in resp.headers
    assert await metric(admin, "gateway_rate_limit_fallbacks_total") == 3
    ready = await admin.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["ready"] is True
    assert body["checks"]["redis"].startswith("down")


async def test_redis_down_in_closed_mode_refuses_with_503(make_gateway, fake):
    proxy, admin, _ = await make_gateway(
        upstream=fake,
        limits=per_key(requests_per_minute=100),
        state=state(closed_port_url(), down="closed"),
    )
    for path, body, headers in (
        (CHAT, chat_body(), openai_key(KEY_A)),
        (MESSAGES, anthropic_body(), {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}),
    ):
        resp = await proxy.post(path, json=body, headers=headers)
        assert resp.status == 503
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["x-governance-error-code"] == "limits-unavailable"
        assert "limits-unavailable" in await resp.text()
    assert fake.requests == []
    ready = await admin.get("/readyz")
    body = await ready.json()
    assert ready.status == 503 and body["ready"] is False
    assert body["checks"]["redis"].startswith("down")
    assert await metric(admin, 'gateway_shed_total{reason="limits-unavailable"}') == 2


async def test_readyz_says_redis_is_ok(make_gateway, fake, redis_prefix):
    _, admin, _ = await make_gateway(
        upstream=fake,
        limits=per_key(requests_per_minute=10),
        state=state(REDIS, redis_prefix, down="closed"),
    )
    resp = await admin.get("/readyz")
    assert resp.status == 200 and (await resp.json())["checks"]["redis"] == "ok"


async def test_without_redis_readyz_does_not_name_it(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake, limits=per_key(requests_per_minute=10))
    assert "redis" not in (await (await admin.get("/readyz")).json())["checks"]


# -- real processes ---------------------------------------------------------------------------


def limits_yaml(redis_prefix: str, **limits: int) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in limits.items())
    return (
        f"limits:\n  per_key:\n{lines}"
        f"state:\n  redis: {REDIS}\n  redis_prefix: {redis_prefix}\n  reconcile_interval: 1\n"
    )


async def start_replicas(tmp_path, upstream: str, schema: str, extra: str, count: int = 2):
    procs = []
    try:
        for i in range(count):
            home = tmp_path / f"p{i}"
            home.mkdir()
            (home / "policies").mkdir()
            (home / "policies" / "main.yaml").write_text(
                "policies:\n  - {id: no-secret, kind: phrases, phrases: [internal use only]}\n"
            )
            proxy_port, admin_port = free_port(), free_port()
            config = write_config(
                home,
                upstream,
                proxy_port,
                admin_port,
                store_url=f"{PG_DSN}?schema={schema}",
                extra=extra,
            )
            procs.append(await start_gateway(config, admin_port, proxy_port))
    except BaseException:
        for proc in procs:
            await proc.stop()
        raise
    return procs


@pytest.mark.slow
async def test_two_processes_on_one_redis_enforce_one_limit(
    tmp_path, fake, redis_prefix, pg_schema
):
    a, b = await start_replicas(
        tmp_path, fake.url, pg_schema, limits_yaml(redis_prefix, requests_per_minute=4)
    )
    try:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for i in range(8):
                proxy = (a, b)[i % 2].proxy
                async with http.post(
                    f"{proxy}{CHAT}", json=chat_body(), headers=openai_key(KEY_A)
                ) as resp:
                    statuses.append(resp.status)
            # alone, each process would have let 4 through: 8 in all
            assert sorted(statuses) == [200] * 4 + [429] * 4, statuses
            assert statuses[:4] == [200] * 4
            for proc in (a, b):

                async def ready(admin: str = proc.admin) -> bool:
                    async with http.get(f"{admin}/readyz") as resp:
                        body = await resp.json()
                    assert resp.status == 200 and body["checks"]["redis"] == "ok", body
                    # the change-notice connection to the shared PostgreSQL store
                    return body["checks"]["change_notices"] == "ok"

                await until(ready)
    finally:
        await asyncio.gather(a.stop(), b.stop())


@pytest.mark.slow
async def test_a_client_that_hangs_up_mid_stream_frees_its_slot(
    tmp_path, gated, redis_prefix, pg_schema
):
    (gw,) = await start_replicas(
        tmp_path, gated.url, pg_schema, limits_yaml(redis_prefix, concurrent_streams=1), count=1
    )
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{gw.proxy}{CHAT}"
            body, key = chat_body(stream=True), openai_key(KEY_A)
            leaving = aiohttp.ClientSession()
            hanging = asyncio.create_task(leaving.post(url, json=body, headers=key))
            await until(lambda: _seen(gated, 1))
            async with http.post(url, json=body, headers=key) as resp:
                assert resp.status == 429
            # the client goes away while its stream waits on the upstream
            hanging.cancel()
            await asyncio.gather(hanging, return_exceptions=True)
            await leaving.close()

            # admitted means the upstream is asked; refused means 429 at once
            async def admitted() -> bool:
                seen = len(gated.requests)
                attempt = asyncio.create_task(http.post(url, json=body, headers=key))
                try:
                    await until(lambda: _done_or_seen(attempt, gated, seen + 1), seconds=10)
                    if attempt.done():
                        resp = attempt.result()
                        status = resp.status
                        resp.release()
                        return status != 429
                    return True
                finally:
                    if not attempt.done():
                        gated.gate.set()
                        (await attempt).release()

            await until(admitted, seconds=20, step=0.2)
    finally:
        gated.gate.set()
        await gw.stop()
    assert await _no_slots_held(redis_prefix)


async def _seen(upstream: FakeUpstream, count: int) -> bool:
    return len(upstream.requests) >= count


async def _done_or_seen(task: asyncio.Task, upstream: FakeUpstream, count: int) -> bool:
    return task.done() or len(upstream.requests) >= count


async def _no_slots_held(prefix: str) -> bool:
    client = Redis.from_url(REDIS, decode_responses=True)
    try:
        for key in await redis_keys(prefix):
            if key.endswith(":streams") and await client.zcard(key):
                return False
        return True
    finally:
        await client.aclose()


def test_no_redis_url_is_taken_from_this_environment():
    # the tests above name their Redis in the config; a GATEWAY_REDIS_URL here would win
    assert "GATEWAY_REDIS_URL" not in os.environ
