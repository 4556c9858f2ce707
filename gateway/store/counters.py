"""Counters that limits are enforced with: token buckets and leased slots.

Two kinds, both taken in one call so a request costs one round trip:

- a **bucket** holds ``capacity`` tokens and refills them evenly over
  ``period`` seconds; a request takes one. It is kept as one number, the
  time at which the bucket would be full again (GCRA), so it costs the same
  whatever the capacity, and the wait until the next token is exact.
- **slots** are held while something lasts (a stream). A slot in Redis is
  leased: its holder renews it while it lives, and a slot nobody renews (its
  process was killed) frees itself when its lease runs out. A slot without a
  lease is held until it is given back.

``MemoryCounters`` counts for one process; ``RedisCounters``
(``gateway.store.redis_counters``) for every process using one Redis.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    capacity: int
    # seconds in which an empty bucket fills up again
    period: float

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return self.period / self.capacity


@dataclass(frozen=True, slots=True)
class Slot:
    key: str
    # slots under ``key`` that may be held at once
    limit: int
    # this holder, unique among every process's holders
    member: str
    # seconds the slot stays held without a renewal; None: until it is given back
    lease: float | None


@dataclass(frozen=True, slots=True)
class Taken:
    ok: bool
    # which counter refused; None when ``ok``
    refused: Literal["bucket", "slot"] | None = None
    # seconds until the refusing counter has room again (a slot's lease is only a bound;
    # 0.0 when the slots held have no lease, so no bound is known)
    wait: float = 0.0


TAKEN = Taken(True)


class Counters(ABC):
    @abstractmethod
    async def take(self, bucket: Bucket | None, slot: Slot | None) -> Taken:
        """A token of ``bucket`` and ``slot``, both or neither."""

    @abstractmethod
    async def renew(self, slots: list[Slot]) -> None:
        """Extend the leases of ``slots``, held by this process."""

    @abstractmethod
    async def give_back(self, slot: Slot) -> None:
        """Free ``slot``."""


class MemoryCounters(Counters):
    """Counters of this process alone (the same arithmetic as Redis's, on its clock)."""

    # entries of idle keys are dropped after this many takes
    PRUNE_EVERY = 4096

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        # bucket key -> when it is full again
        self._full_at: dict[str, float] = {}
        # slot key -> member -> lease end
        self._held: dict[str, dict[str, float]] = {}
        self._takes = 0

    async def take(self, bucket: Bucket | None, slot: Slot | None) -> Taken:
        return self.take_now(bucket, slot)

    def take_now(self, bucket: Bucket | None, slot: Slot | None) -> Taken:
        now = self._clock()
        self._takes += 1
        if self._takes % self.PRUNE_EVERY == 0:
            self._prune(now)
        full_at = 0.0
        if bucket is not None:
            interval = bucket.interval
            full_at = max(self._full_at.get(bucket.key, now), now) + interval
            room_at = full_at - bucket.capacity * interval
            if room_at > now:
                return Taken(False, "bucket", room_at - now)
        if slot is not None:
            held = self._held.setdefault(slot.key, {})
            for member in [m for m, end in held.items() if end <= now]:
                del held[member]
            if len(held) >= slot.limit:
                first_end = min(held.values())
                return Taken(False, "slot", first_end - now if first_end < math.inf else 0.0)
            held[slot.member] = now + slot.lease if slot.lease is not None else math.inf
        if bucket is not None:
            self._full_at[bucket.key] = full_at
        return TAKEN

    async def renew(self, slots: list[Slot]) -> None:
        now = self._clock()
        for slot in slots:
            held = self._held.get(slot.key)
            if held is not None and slot.member in held and slot.lease is not None:
                held[slot.member] = now + slot.lease

    async def give_back(self, slot: Slot) -> None:
        self.give_back_now(slot)

    def give_back_now(self, slot: Slot) -> None:
        held = self._held.get(slot.key)
        if held is not None:
            held.pop(slot.member, None)
            if not held:
                del self._held[slot.key]

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._full_at.items() if t <= now]:
            del self._full_at[key]
        for key, held in list(self._held.items()):
            for member in [m for m, end in held.items() if end <= now]:
                del held[member]
            if not held:
                del self._held[key]
