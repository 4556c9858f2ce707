"""The audit trail: decision records leave the hot path through a bounded queue.

The log subscribes to ``DecisionRecord`` on the event bus and only appends
it; a background task writes batches to the store. A store outage is
retried, never blocks requests, and a full queue drops the oldest-waiting
records with a metric rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from gateway.observability.metrics import Metrics
from gateway.records.decision import DecisionRecord
from gateway.retry import retry_forever
from gateway.store.base import Store

log = logging.getLogger(__name__)


def _ignore(count: int) -> None:
    """The commit hook until a journal registers the log."""


class DecisionLog:
    """The store's consumer of decision records (a ``Durable`` of the journal)."""

    name = "decisions"

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        max_queue: int = 50_000,
        batch: int = 500,
        interval: float = 0.05,
    ):
        self.store = store
        self.metrics = metrics
        self._queue: deque[DecisionRecord] = deque()
        self._max = max_queue
        self._batch = batch
        self._interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        # The background writer and readers that need their record written
        # (GET /decisions/{id}) both call flush(); one writer at a time keeps
        # a batch from being inserted twice.
        self._writing = asyncio.Lock()
        # records taken from the bus; ``committed`` hears how many of them are written
        self._received = 0
        self.committed: Callable[[int], None] = _ignore

    def add(self, record: DecisionRecord) -> None:
        self._received += 1
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.metrics.decisions_dropped.inc()
        self._queue.append(record)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log")

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            # the store is down: the records stay queued until a write succeeds
            await retry_forever(
                self.flush,
                what="decision log write",
                first=self._interval,
                cap=5.0,
                give_up=lambda: self._closing,
            )

    async def flush(self) -> None:
        async with self._writing:
            while self._queue:
                # Take the batch out before awaiting, so add() dropping the
                # oldest record meanwhile can't shift what gets removed.
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                try:
                    await self.store.insert_decisions(batch)
                except BaseException:
                    self._requeue(batch)
                    raise
                self.metrics.decision_queue.set(len(self._queue))
                # no batch is in flight now: all but the queued ones are written (or dropped)
                self.committed(self._received - len(self._queue))

    async def replay(self, records: list[DecisionRecord]) -> None:
        """Write records recovered from a journal (the store ignores ids it already has)."""
        await self.store.insert_decisions(records)

    def _requeue(self, batch: list[DecisionRecord]) -> None:
        """Put an unwritten batch back in front, still honouring the bound."""
        self._queue.extendleft(reversed(batch))
        while len(self._queue) > self._max:
            self._queue.popleft()
            self.metrics.decisions_dropped.inc()
        self.metrics.decision_queue.set(len(self._queue))

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            # a write in flight puts its batch back; the last flush below takes it
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except Exception as exc:
            log.error("could not write %d decision records at shutdown: %s", len(self._queue), exc)
