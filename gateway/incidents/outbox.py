"""The durable outbox between incident events and the sinks.

An event's outbox rows are written in the same transaction as the incident
change that caused it, so nothing is lost to a crash between the two. A
sender delivers them: at least once (a row is deleted only after the sink
said 2xx), in order per sink and dedup key (only the oldest row of each such
group is ever in flight), with exponential backoff and jitter between tries.

Every process sharing the store runs a sender. A sender first claims the rows
it will send, in one statement, by setting a lease on them; a row leased by
one process is left alone by the others until the lease runs out, which it
does only if its holder died or hung mid-delivery. So each attempt is made by
one process, and the head-of-group rule holds across processes: a row is
claimed only while no older live row of its group exists and no row of its
group is leased.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

import aiohttp

from gateway.config import Incidents, Sink
from gateway.errors import SinkCredentialMissing
from gateway.incidents import sinks as wire
from gateway.retry import delay, retry_forever
from gateway.store.base import Statement, Store

log = logging.getLogger(__name__)

# how many heads are claimed, and delivered at once, across sinks and keys
CONCURRENCY = 8
# a lease outlasts the slowest sink's timeout by this much: the time to claim,
# build the request and record the outcome
LEASE_MARGIN = 15.0

# a row may go out when it is due, unleased, the oldest live row of its group,
# and no other row of its group is leased (``?``: due-by time, then the clock twice)
_CLAIMABLE = (
    "o.dead = 0 AND o.next_attempt_at <= ? "
    "AND (o.claimed_until IS NULL OR o.claimed_until < ?) "
    "AND NOT EXISTS (SELECT 1 FROM incident_outbox p "
    "WHERE p.sink = o.sink AND p.dedup_key = o.dedup_key AND p.id <> o.id "
    "AND ((p.dead = 0 AND (p.ord < o.ord OR (p.ord = o.ord AND p.id < o.id))) "
    "OR p.claimed_until >= ?))"
)
_RETURNING = "RETURNING id, dedup_key, ord, sink, event, payload, attempts"
# PostgreSQL: rows another sender is claiming right now are skipped, not waited for
# (the other sender's claim makes their groups unclaimable anyway)
_CLAIM_POSTGRES = (
    "UPDATE incident_outbox SET claimed_until = ?, claimed_by = ? WHERE id IN "
    f"(SELECT o.id FROM incident_outbox o WHERE {_CLAIMABLE} ORDER BY o.ord LIMIT ? "
    f"FOR UPDATE SKIP LOCKED) {_RETURNING}"
)
# SQLite runs one writer at a time, so one UPDATE is atomic as it stands
_CLAIM_SQLITE = (
    "UPDATE incident_outbox SET claimed_until = ?, claimed_by = ? WHERE id IN "
    f"(SELECT o.id FROM incident_outbox o WHERE {_CLAIMABLE} ORDER BY o.ord LIMIT ?) "
    f"{_RETURNING}"
)


class Outbox:
    def __init__(self, store: Store, cfg: Incidents, metrics) -> None:
        self.store = store
        self.cfg = cfg
        self.sinks: dict[str, Sink] = {s.name: s for s in cfg.sinks}
        self.metrics = metrics
        self._ord = 0
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    # -- writing (inside the caller's transaction) -----------------------------------
    def next_ord(self) -> int:
        # strictly increasing and, being time based, still increasing after a restart
        self._ord = max(self._ord + 1, time.time_ns() // 1000)
        return self._ord

    def rows(
        self,
        incident,
        seq: int,
        event: str,
        *,
        ts: float,
        actor: str,
        message: str,
        url: str | None,
        sinks: list[str] | None = None,
    ) -> list[Statement]:
        """Outbox inserts for one incident event, one per sink that takes it."""
        out: list[Statement] = []
        for sink in self.cfg.sinks:
            if sinks is not None and sink.name not in sinks:
                continue
            if not wire.handles(sink, event):
                continue
            delivery_id = f"{incident.id}.{seq}.{sink.name}"
            payload = {
                "event": event,
                "ts": ts,
                "actor": actor,
                "message": message,
                "url": url,
                "seq": seq,
                "delivery_id": delivery_id,
                "incident": incident.summary(),
            }
            out.append(
                (
                    "INSERT INTO incident_outbox (id, incident_id, seq, dedup_key, ord, sink, "
                    "event, payload, created_at, attempts, next_attempt_at, dead) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0) ON CONFLICT (id) DO NOTHING",
                    (
                        delivery_id,
                        incident.id,
                        seq,
                        incident.dedup_key,
                        self.next_ord(),
                        sink.name,
                        event,
                        json.dumps(payload, default=str),
                        ts,
                        ts,
                    ),
                )
            )
        return out

    # -- sending --------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.outbox.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            # the store is down: the rows wait for us
            await retry_forever(
                self._deliver_all,
                what="reading the incident outbox",
                first=self.cfg.outbox.poll_interval,
                cap=max(self.cfg.outbox.poll_interval, 10.0),
                give_up=lambda: self._stopping,
            )

    async def _deliver_all(self) -> None:
        while not self._stopping:
            claimed, delivered = await self._send_batch(None)
            # a full batch may have left more due rows behind it
            if not delivered and claimed < CONCURRENCY:
                return

    def stop(self) -> None:
        """Finish the deliveries in flight, start no more."""
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def pending(self) -> int:
        row = await self.store.fetchone("SELECT COUNT(*) AS n FROM incident_outbox WHERE dead = 0")
        return int(row["n"]) if row else 0

    async def deliver_due(self, now: float | None = None) -> int:
        """Claim and send up to ``CONCURRENCY`` due heads; return how many were delivered."""
        return (await self._send_batch(now))[1]

    def lease(self) -> float:
        """Seconds a claim lasts: past any sink's timeout, so only a dead sender loses one."""
        return max((s.timeout for s in self.cfg.sinks), default=10.0) + LEASE_MARGIN

    async def claim(self, now: float | None = None) -> tuple[str, list[dict[str, Any]]]:
        """Lease the due heads this process will send; the token marks the lease as ours."""
        clock = time.time()
        now = clock if now is None else now
        token = secrets.token_hex(8)
        sql = _CLAIM_POSTGRES if self.store.dialect == "postgresql" else _CLAIM_SQLITE
        rows = await self.store.fetchall(
            sql, clock + self.lease(), token, now, clock, clock, CONCURRENCY
        )
        return token, sorted(rows, key=lambda r: (r["ord"], r["id"]))

    async def _send_batch(self, now: float | None) -> tuple[int, int]:
        """Claim, then deliver what was claimed, all at once; (claimed, delivered)."""
        self.metrics.outbox_pending.set(await self.pending())
        token, rows = await self.claim(now)
        if not rows:
            return 0, 0
        results = await asyncio.gather(*(self._deliver(row, token) for row in rows))
        return len(rows), sum(results)

    async def _deliver(self, row: dict[str, Any], token: str) -> bool:
        sink = self.sinks.get(row["sink"])
        if sink is None:
            # the sink left the config; nobody is left to tell
            await self.store.execute(
                "UPDATE incident_outbox SET dead = 1, last_error = ?, claimed_until = NULL, "
                "claimed_by = NULL WHERE id = ? AND claimed_by = ?",
                "sink no longer configured",
                row["id"],
                token,
            )
            return False
        event = json.loads(row["payload"])
        try:
            request = wire.build_request(sink, event)
            timeout = aiohttp.ClientTimeout(total=sink.timeout)
            async with self._http().request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
            ) as resp:
                await resp.read()
                status = resp.status
            reason = None if 200 <= status < 300 else f"HTTP {status}"
        except SinkCredentialMissing as exc:
            reason = str(exc)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # never the exception text: it can carry the URL, and a webhook URL is a secret
            reason = type(exc).__name__
        if reason is None:
            # even if our lease ran out meanwhile: the event is delivered
            await self.store.execute("DELETE FROM incident_outbox WHERE id = ?", row["id"])
            self.metrics.deliveries.labels(sink.name, "delivered").inc()
            return True
        attempts = row["attempts"] + 1
        limit = self.cfg.outbox.max_attempts
        dead = limit is not None and attempts >= limit
        delay = self.backoff(attempts)
        # only while the lease is ours: a sender that took the row over after it
        # ran out counts its own attempt, and its lease must not be cleared
        recorded = await self.store.execute(
            "UPDATE incident_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
            "dead = ?, claimed_until = NULL, claimed_by = NULL WHERE id = ? AND claimed_by = ?",
            attempts,
            time.time() + delay,
            reason,
            int(dead),
            row["id"],
            token,
        )
        if not recorded:
            log.warning(
                "incident sink %s: %s not delivered (%s); its lease ran out, another try is "
                "already someone else's",
                sink.name,
                row["id"],
                reason,
            )
            return False
        self.metrics.deliveries.labels(sink.name, "dead" if dead else "retry").inc()
        if dead:
            log.error(
                "incident sink %s: gave up on %s after %d tries (%s)",
                sink.name,
                row["id"],
                attempts,
                reason,
            )
        else:
            log.warning(
                "incident sink %s: %s not delivered (%s); try %d again in %.2fs",
                sink.name,
                row["id"],
                reason,
                attempts + 1,
                delay,
            )
        return False

    def backoff(self, attempts: int) -> float:
        return delay(attempts, first=self.cfg.outbox.base_delay, cap=self.cfg.outbox.max_delay)
