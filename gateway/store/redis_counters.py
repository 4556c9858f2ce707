"""``Counters`` in Redis, so several gateway processes enforce one limit together.

Each take is one Lua script, so it is atomic and one round trip; the time
is Redis's own (``TIME``), so the processes' clocks never disagree.

Redis being down must not slow requests: commands time out quickly, and
after a failure Redis is skipped for ``cooldown`` seconds, then tried by one
caller at a time until it answers. Every failure is raised as a
``ConnectionError``; the caller decides what a request gets meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.store.counters import TAKEN, Bucket, Counters, Slot, Taken

log = logging.getLogger(__name__)

T = TypeVar("T")

# microseconds throughout: Redis's TIME resolution, and below 2**53 so a score is exact
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local k = 1
local bucket, full_at
if ARGV[1] == '1' then
  bucket = KEYS[k]
  k = k + 1
  local interval = tonumber(ARGV[2])
  local stored = tonumber(redis.call('GET', bucket))
  if stored == nil or stored < now then stored = now end
  full_at = stored + interval
  local room_at = full_at - tonumber(ARGV[3]) * interval
  if room_at > now then return {0, 1, room_at - now} end
end
if ARGV[4] == '1' then
  local slots = KEYS[k]
  local lease = tonumber(ARGV[7])
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', string.format('%d', now))
  if redis.call('ZCARD', slots) >= tonumber(ARGV[5]) then
    local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
    return {0, 2, tonumber(first[2]) - now}
  end
  redis.call('ZADD', slots, string.format('%d', now + lease), ARGV[6])
  redis.call('PEXPIRE', slots, math.ceil(lease / 1000))
end
if bucket then
  redis.call('SET', bucket, string.format('%d', full_at), 'PX', math.ceil((full_at - now) / 1000))
end
return {1, 0, 0}
"""

# extends a slot that is still held, never adds one back: a renewal racing with
# the give-back of a finished stream must not hold its slot for another lease
# (XX: update existing members only). A slot lost with a restarted Redis stays
# lost; its stream runs to its end uncounted.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + lease), ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000))
  return 1
end
return 0
"""

_REFUSED_BY: dict[int, Any] = {1: "bucket", 2: "slot"}


def _us(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1_000_000))


def _lease_us(slot: Slot) -> int:
    # a slot in Redis outlives a killed holder only until its lease runs out
    if slot.lease is None:
        raise ValueError(f"a slot kept in Redis needs a lease: {slot.key}")
    return _us(slot.lease)


class RedisCounters(Counters):
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        cooldown: float = 2.0,
        max_connections: int = 128,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # waiting for a free connection is bounded like a command
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # no retries: a request must not wait for several attempts; the breaker retries
            retry=Retry(NoBackoff(), 0),
        )
        self._client = Redis.from_pool(pool)
        self._take = self._client.register_script(_TAKE)
        self._renew = self._client.register_script(_RENEW)
        self.timeout = timeout
        self.cooldown = cooldown
        self._clock = clock
        # Redis is skipped until then; 0.0 while it answers
        self._skip_until = 0.0
        self._probing = False
        # why Redis was last found down: the exception's class, never its text (it may
        # carry the host or credentials of the URL)
        self.last_error: str | None = None

    @property
    def down(self) -> bool:
        """Redis failed and has not answered since."""
        return self._skip_until != 0.0

    def retry_in(self) -> float:
        """Seconds until Redis is tried again."""
        return max(0.0, self._skip_until - self._clock())

    async def take(self, bucket: Bucket | None, slot: Slot | None) -> Taken:
        keys: list[str] = []
        args: list[Any] = ["0", 0, 0, "0", 0, "", 0]
        if bucket is not None:
            keys.append(bucket.key)
            args[0:3] = ["1", _us(bucket.interval), bucket.capacity]
        if slot is not None:
            keys.append(slot.key)
            args[3:7] = ["1", slot.limit, slot.member, _lease_us(slot)]
        ok, which, wait_us = await self._call(lambda: self._take(keys=keys, args=args))
        if ok:
            return TAKEN
        return Taken(False, _REFUSED_BY[int(which)], max(0, int(wait_us)) / 1_000_000)

    async def renew(self, slots: list[Slot]) -> None:
        if not slots:
            return

        async def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for slot in slots:
                await self._renew(keys=[slot.key], args=[slot.member, _lease_us(slot)], client=pipe)
            return await pipe.execute()

        await self._call(run)

    async def give_back(self, slot: Slot) -> None:
        await self._call(lambda: self._client.zrem(slot.key, slot.member))

    async def ping(self) -> None:
        await self._call(self._client.ping)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        if self._skip_until:
            if self._clock() < self._skip_until or self._probing:
                raise ConnectionError(f"Redis is skipped after {self.last_error}")
            # one caller finds out whether Redis is back; the others keep skipping it
            self._probing = True
        try:
            # the socket timeouts bound each read; this bounds connect, pool wait and reads together
            async with asyncio.timeout(self.timeout * 2):
                result = await command()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise ConnectionError(f"Redis failed: {type(exc).__name__}") from None
        except BaseException:
            self._probing = False
            raise
        if self._skip_until:
            log.warning("per-key limit counters: Redis answers again")
        self._skip_until = 0.0
        self._probing = False
        self.last_error = None
        return result

    def _failed(self, exc: BaseException) -> None:
        if not self._skip_until:
            log.warning(
                "per-key limit counters: Redis failed (%s); skipping it for %gs at a time "
                "until it answers",
                type(exc).__name__,
                self.cooldown,
            )
        self.last_error = type(exc).__name__
        self._skip_until = self._clock() + self.cooldown
        self._probing = False
