"""The store interface: SQLite by default, PostgreSQL through a DSN.

Callers write portable SQL with ``?`` placeholders; each backend translates.
Every method is a coroutine and never blocks the event loop.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.records.decision import DecisionRecord

Row = dict[str, Any]
Statement = tuple[str, tuple[Any, ...]]


class RowsChanged(Exception):
    """A statement of a fenced transaction changed another number of rows; nothing was written."""


def check_rows(index: int, count: int, expect: Sequence[int | None] | None) -> None:
    if expect is not None and index < len(expect):
        wanted = expect[index]
        if wanted is not None and count != wanted:
            raise RowsChanged(f"statement {index} changed {count} rows, not {wanted}")


class Store(ABC):
    dialect = "base"

    @abstractmethod
    async def open(self) -> None:
        """Connect and run pending migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...

    @abstractmethod
    async def fetchall(self, sql: str, *params: Any) -> list[Row]: ...

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        rows = await self.fetchall(sql, *params)
        return rows[0] if rows else None

    @abstractmethod
    async def transaction(
        self, statements: list[Statement], expect: Sequence[int | None] | None = None
    ) -> list[int]:
        """Run statements atomically; return each one's changed-row count.

        ``expect[i]``, when given and not None, is how many rows statement ``i``
        must change: any other count undoes the whole transaction and raises
        ``RowsChanged``. That is how a writer fences itself: removing queue
        items another process removed first changes fewer rows.
        """

    # -- decision records ---------------------------------------------------
    async def insert_decisions(self, records: list[DecisionRecord]) -> None:
        rows = [
            (
                r.decision_id,
                r.ts,
                r.route,
                r.model,
                r.action,
                r.revision,
                orjson.dumps(r.to_json(), default=str).decode(),
                # what a route's variants are compared on (gateway/canary), as columns
                r.variant,
                1 if r.breached else 0,
                r.total_ms,
            )
            for r in records
        ]
        await self.executemany(
            "INSERT INTO decisions (id, ts, route, model, action, revision, record, variant, "
            "breached, total_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            rows,
        )

    async def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        row = await self.fetchone("SELECT record FROM decisions WHERE id = ?", decision_id)
        return json.loads(row["record"]) if row else None

    async def list_decisions(
        self, *, route: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        clauses, params = [], []
        if route:
            clauses.append("route = ?")
            params.append(route)
        if action:
            clauses.append("action = ?")
            params.append(action)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.fetchall(
            f"SELECT record FROM decisions {where} ORDER BY ts DESC LIMIT ?", *params, limit
        )
        return [json.loads(r["record"]) for r in rows]
