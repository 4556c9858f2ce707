"""Per-key limits: requests a minute and streams in flight, for each client.

A client is its API key (``authorization: Bearer`` / ``x-api-key`` /
``api-key``); without one, its tenant header (``x-governance-tenant``, else
``openai-organization``); without either, every such client counts as one.
A tenant header never splits a key's allowance: anyone can send any tenant.
Counters are named by an HMAC of that identity, never by the key itself.

Requests a minute are a token bucket (see ``gateway.store.counters``): a
client idle for a minute may send its whole minute at once, and then one
request every ``60 / requests_per_minute`` seconds, the way Anthropic
describes its own limits. Streams hold a slot from their start until their
end, whatever ends them. A slot in Redis is leased and renewed while its
stream runs, so a process killed mid-stream leaves slots that free
themselves when their lease runs out; a slot in this process's memory dies
with the process, so it has no lease and is held until given back.

With ``state.redis`` the processes share the counters; without it, or while
Redis is down in ``open`` mode, each process counts alone, so N processes
allow N times the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from prometheus_client import Counter

from gateway.config import KeyLimits, Route, Settings
from gateway.errors import LimitsUnavailable, RateLimited
from gateway.observability.metrics import Metrics
from gateway.proxy.credentials import api_key_id, tenant_of
from gateway.store.counters import Bucket, Counters, MemoryCounters, Slot, Taken

if TYPE_CHECKING:
    from gateway.store.redis_counters import RedisCounters

log = logging.getLogger(__name__)

# seconds a stream's slot in Redis stays held without renewal; renewed three times a lease
LEASE = 30.0
# without a configured secret, identities are still hashed, under this fixed one
_DEFAULT_SECRET = b"gateway-per-key-limits"


@dataclass(frozen=True, slots=True)
class HeldSlot:
    """A stream's slot, to give back when the stream ends."""

    slot: Slot
    counters: Counters


class KeyLimiter:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        limits = settings.limits
        self.default = limits.per_key
        self.by_route = {r.name: r.per_key for r in settings.routes if r.per_key is not None}
        self.active = self.default.active or any(k.active for k in self.by_route.values())
        self.retry_after = limits.retry_after
        secret_env = limits.per_key_secret_env
        secret = os.environ.get(secret_env) if secret_env else None
        if secret_env and not secret:
            log.warning(
                "per-key limits: %s is unset; client keys are hashed without it", secret_env
            )
        self._secret = secret.encode() if secret else _DEFAULT_SECRET
        self._prefix = settings.state.redis_prefix
        url = settings.state.redis_url()
        self.shared: RedisCounters | None = None
        if url:
            # imported only when used: the client costs a tenth of a second to import
            from gateway.store.redis_counters import RedisCounters

            self.shared = RedisCounters(url)
        # without Redis, or while it is down and the mode is ``open``
        self.local = MemoryCounters()
        self.closed = settings.state.redis_down == "closed"
        self._shed = metrics.shed
        self.fallbacks = Counter(
            "gateway_rate_limit_fallbacks_total",
            "Per-key limit checks counted in one process's memory because Redis was unreachable",
            registry=metrics.registry,
        )
        # every slot in Redis that this process holds, renewed until given back
        self._renewing: set[Slot] = set()
        self._returns: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._holder = f"{uuid.uuid4().hex[:12]}"
        self._serial = itertools.count()

    @property
    def needs_redis(self) -> bool:
        """Requests are refused while Redis is down (``closed`` mode with limits set)."""
        return self.shared is not None and self.closed and self.active

    def limits_for(self, route: Route) -> tuple[KeyLimits, str]:
        """The limits that apply on ``route`` and the scope their counters are kept in."""
        own = self.by_route.get(route.name)
        return (own, route.name) if own is not None else (self.default, "*")

    def identity(self, headers: Mapping[str, str]) -> str:
        """The client's counter name: a keyed hash of its key, else of its tenant."""
        key = api_key_id(headers)
        if key is None:
            tenant = tenant_of(headers)
            key = f"tenant:{tenant}" if tenant is not None else "anonymous"
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()[:32]

    async def admit(
        self, route: Route, headers: Mapping[str, str], stream: bool
    ) -> HeldSlot | None:
        """Count one request of this client; raise ``RateLimited`` if it is over a limit.

        A stream gets a slot to give back with ``release`` when it ends.
        """
        if not self.active:
            return None
        limits, scope = self.limits_for(route)
        rpm, streams = limits.requests_per_minute, limits.concurrent_streams
        if rpm is None and (streams is None or not stream):
            return None
        # the hash tag keeps both counters of a client on one Redis Cluster node
        base = f"{self._prefix}:{{{scope}:{self.identity(headers)}}}"
        bucket = Bucket(f"{base}:rpm", rpm, 60.0) if rpm is not None else None
        slot = None
        if stream and streams is not None:
            member = f"{self._holder}:{next(self._serial)}"
            slot = Slot(f"{base}:streams", streams, member, LEASE)
        taken, counters, slot = await self._take(bucket, slot)
        if not taken.ok:
            if taken.refused == "bucket":
                self._shed.labels("key-requests").inc()
                raise RateLimited(
                    f"over this client's limit of {rpm} requests a minute; retry shortly",
                    max(1, math.ceil(taken.wait)),
                )
            self._shed.labels("key-streams").inc()
            raise RateLimited(
                f"this client has {streams} streamed answers in flight, its limit; "
                "retry when one ends",
                self.retry_after,
            )
        if slot is None:
            return None
        if counters is not self.local:
            self._renewing.add(slot)
        return HeldSlot(slot, counters)

    async def _take(
        self, bucket: Bucket | None, slot: Slot | None
    ) -> tuple[Taken, Counters, Slot | None]:
        """Take from Redis, else from memory; the slot returned is the one held."""
        if self.shared is not None:
            try:
                return await self.shared.take(bucket, slot), self.shared, slot
            except ConnectionError:
                if self.closed:
                    self._shed.labels("limits-unavailable").inc()
                    raise LimitsUnavailable(
                        "per-key limits cannot be checked: Redis is unreachable; retry shortly",
                        max(1, math.ceil(self.shared.retry_in())),
                    ) from None
                self.fallbacks.inc()
        # A slot in memory is held until given back, with no lease: nothing renews it,
        # and ``release`` always gives it back when its stream ends (the request's
        # ``finally``), in this same process. A lease would free a stream's slot while
        # the stream still runs, letting a client run any number of long streams.
        if slot is not None:
            slot = replace(slot, lease=None)
        return self.local.take_now(bucket, slot), self.local, slot

    async def release(self, held: HeldSlot | None) -> None:
        """Give a stream's slot back, even while its request is being cancelled.

        Awaited, not left to run later: the next request on the same connection
        (a client streaming one answer after another) must find the slot free.
        """
        if held is None:
            return
        if held.counters is self.local:
            self.local.give_back_now(held.slot)
            return
        self._renewing.discard(held.slot)
        task = asyncio.get_running_loop().create_task(self._give_back(held))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)
        await asyncio.shield(task)

    async def _give_back(self, held: HeldSlot) -> None:
        try:
            await held.counters.give_back(held.slot)
        except ConnectionError:
            pass  # its lease frees it

    async def redis_status(self) -> str | None:
        """``ok``, ``down: <why>``, or None without Redis (for /readyz)."""
        if self.shared is None:
            return None
        try:
            await self.shared.ping()
        except ConnectionError:
            return f"down: {self.shared.last_error or 'unreachable'}"
        return "ok"

    async def start(self) -> None:
        if self.active and self.shared is None:
            log.warning(
                "per-key limits are counted by each process alone: with N workers or "
                "replicas a client gets N times its limit; set state.redis to share them"
            )
        if self.shared is not None:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="per-key-slot-renewal"
            )

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            if self.shared is not None and self._renewing:
                try:
                    await self.shared.renew(list(self._renewing))
                except ConnectionError:
                    pass  # tried again next round; a lease outlives two missed renewals

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._returns:
            await asyncio.wait(list(self._returns), timeout=1.0)
        if self.shared is not None:
            await self.shared.close()
