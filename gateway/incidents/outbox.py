"""The durable outbox between incident events and the sinks.

An event's outbox rows are written in the same transaction as the incident
change that caused it, so nothing is lost to a crash between the two. A
sender delivers them: at least once (a row is deleted only after the sink
said 2xx), in order per sink and dedup key (only the oldest row of each such
group is ever in flight), with exponential backoff and jitter between tries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp

from gateway.config import Incidents, Sink
from gateway.errors import SinkCredentialMissing
from gateway.incidents import sinks as wire
from gateway.retry import delay, retry_forever
from gateway.store.base import Statement, Store

log = logging.getLogger(__name__)

# how many heads are delivered at once, across sinks and keys
CONCURRENCY = 8


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
        while not self._stopping and await self.deliver_due():
            pass

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
        """Send the head of every group that is due; return how many were delivered."""
        rows = await self.store.fetchall(
            "SELECT id, dedup_key, ord, sink, event, payload, attempts, next_attempt_at "
            "FROM incident_outbox WHERE dead = 0 ORDER BY ord LIMIT 5000"
        )
        self.metrics.outbox_pending.set(len(rows))
        now = time.time() if now is None else now
        heads: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            heads.setdefault((row["sink"], row["dedup_key"]), row)
        due = [r for r in heads.values() if r["next_attempt_at"] <= now]
        if not due:
            return 0
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(row: dict[str, Any]) -> bool:
            async with gate:
                return await self._deliver(row)

        results = await asyncio.gather(*(one(r) for r in due))
        return sum(results)

    async def _deliver(self, row: dict[str, Any]) -> bool:
        sink = self.sinks.get(row["sink"])
        if sink is None:
            # the sink left the config; nobody is left to tell
            await self.store.execute(
                "UPDATE incident_outbox SET dead = 1, last_error = ? WHERE id = ?",
                "sink no longer configured",
                row["id"],
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
            await self.store.execute("DELETE FROM incident_outbox WHERE id = ?", row["id"])
            self.metrics.deliveries.labels(sink.name, "delivered").inc()
            return True
        attempts = row["attempts"] + 1
        limit = self.cfg.outbox.max_attempts
        dead = limit is not None and attempts >= limit
        delay = self.backoff(attempts)
        await self.store.execute(
            "UPDATE incident_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
            "dead = ? WHERE id = ?",
            attempts,
            time.time() + delay,
            reason,
            int(dead),
            row["id"],
        )
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
