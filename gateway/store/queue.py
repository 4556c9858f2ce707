"""A queue in the store from every gateway process to the one that applies its items.

Incident rules and monitor windows must count the traffic of every process
and replica, so each process hands its signals to the leader (see
``leadership``) through the ``shared_queue`` table: ``push`` commits a batch;
the leader ``peek``s the oldest items of a topic and marks them applied
with a statement it commits together with what it made of them, so an item
is applied exactly once even when the leader dies mid-batch. An applied item
stays, marked, for ``KEEP`` seconds before ``prune`` deletes it: a process
whose insert committed but whose answer was lost sends the same ids again,
and they must meet the applied row, not an empty place.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import Any

import orjson

from gateway.store.base import Statement, Store

_ORIGIN = uuid.uuid4().hex[:8]
# seconds an applied item is kept; a hand-over is sent again within seconds
KEEP = 600.0


class SharedQueue:
    def __init__(self, store: Store, topic: str) -> None:
        self.store = store
        self.topic = topic
        self._counter = itertools.count()
        # taken but not yet removed (the leader's write is pending): never applied twice
        self._taken: set[str] = set()

    def _next_id(self) -> str:
        # time first, so ids sort in arrival order across processes; the origin and
        # a counter keep two ids of one nanosecond apart
        return f"{time.time_ns():020d}-{_ORIGIN}{os.getpid():x}-{next(self._counter):08d}"

    def statements(self, bodies: list[Any]) -> list[Statement]:
        return [statement for _, statement in self.items(bodies)]

    def items(self, bodies: list[Any]) -> list[tuple[str, Statement]]:
        """Each body's id in the queue and the statement that adds it."""
        now = time.time()
        out = []
        for body in bodies:
            item_id = self._next_id()
            out.append(
                (
                    item_id,
                    (
                        # sent again after a commit whose answer was lost: ignored
                        "INSERT INTO shared_queue (id, topic, body, created_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                        (item_id, self.topic, orjson.dumps(body).decode(), now),
                    ),
                )
            )
        return out

    async def push(self, bodies: list[Any]) -> None:
        """Commit ``bodies`` to the queue (in order), or raise."""
        if bodies:
            await self.store.transaction(self.statements(bodies))

    async def peek(self, limit: int) -> list[tuple[str, Any]]:
        """The oldest items not taken yet, marked taken until ``removal`` commits or ``release``."""
        rows = await self.store.fetchall(
            "SELECT id, body FROM shared_queue WHERE topic = ? AND applied_at IS NULL "
            "ORDER BY id LIMIT ?",
            self.topic,
            limit + len(self._taken),
        )
        out = []
        for row in rows:
            if row["id"] in self._taken:
                continue
            self._taken.add(row["id"])
            out.append((row["id"], orjson.loads(row["body"])))
            if len(out) >= limit:
                break
        return out

    def removal(self, ids: list[str]) -> list[Statement]:
        """Statements that mark ``ids`` applied, for the caller's transaction.

        Each changes as many rows as ``ids`` only if no other process applied
        any of them first (the fence of ``Plan.fenced``).
        """
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        return [
            (
                f"UPDATE shared_queue SET applied_at = ? WHERE applied_at IS NULL "
                f"AND id IN ({marks})",
                (time.time(), *ids),
            )
        ]

    async def prune(self) -> None:
        """Delete this topic's items applied more than ``KEEP`` seconds ago."""
        await self.store.execute(
            "DELETE FROM shared_queue WHERE topic = ? AND applied_at < ?",
            self.topic,
            time.time() - KEEP,
        )

    def removed(self, ids: list[str]) -> None:
        """The caller's transaction holding ``removal(ids)`` committed."""
        self._taken.difference_update(ids)

    def untake(self, ids: list[str]) -> None:
        """``ids`` were taken but not applied: they may be read again."""
        self._taken.difference_update(ids)

    def release(self) -> None:
        """Forget what was taken (leadership lost): the next leader reads it again."""
        self._taken.clear()

    async def depth(self) -> int:
        row = await self.store.fetchone(
            "SELECT COUNT(*) AS n FROM shared_queue WHERE topic = ? AND applied_at IS NULL",
            self.topic,
        )
        return int(row["n"]) if row else 0
