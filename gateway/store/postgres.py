"""PostgreSQL backend on asyncpg, behind the same interface as SQLite."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.errors import StoreUnavailable
from gateway.store.base import Row, Statement, Store, check_rows
from gateway.store.migrations import MIGRATIONS

_PLACEHOLDER = re.compile(r"\?")
# one advisory lock id, so two gateways starting together migrate one at a time
_MIGRATION_LOCK = 7_341_001
# the server cannot be reached or used now (down, restarting, out of connections or
# disk), as opposed to a statement of ours that is wrong
_OUTAGE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


# seconds to wait for a pooled connection, a new one's connect included. asyncpg
# alone would wait up to a minute for a server that accepts but never answers;
# past this bound the store counts as unavailable and callers fall back at once
ACQUIRE_TIMEOUT = 10.0


def to_dollar(sql: str) -> str:
    """``?`` placeholders to ``$1, $2…`` (our SQL never holds a literal ``?``)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


def _count(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10):
        # ``?schema=name`` keeps the gateway's tables in their own schema
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        self.schema = (query.pop("schema", [None]) or [None])[0]
        self.dsn = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self._pool: asyncpg.Pool | None = None
        self._sizes = (min_size, max_size)

    def _session_settings(self) -> dict[str, str]:
        """What every connection of ours sets: the schema our tables live in."""
        if not self.schema:
            return {}
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.schema):
            raise ValueError(f"invalid schema name {self.schema!r}")
        return {"search_path": self.schema}

    async def open(self) -> None:
        settings = self._session_settings()
        if self.schema:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            command_timeout=30,
            server_settings=settings,
        )
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT, applied_at DOUBLE PRECISION)"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, statements in sorted(MIGRATIONS, key=lambda m: m[0]):
                if version in done:
                    continue
                for sql in statements:
                    await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, time.time()
                )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None or self._pool.is_closing():
            raise StoreUnavailable("the store is not open")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; an outage while using it raises ``StoreUnavailable``."""
        try:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn
        except StoreUnavailable:
            raise
        except _OUTAGE as exc:
            # the class only: asyncpg's messages can carry the host and user
            raise StoreUnavailable(
                f"the PostgreSQL store is unavailable ({type(exc).__name__})"
            ) from exc

    async def connect(
        self, *, timeout: float = 10.0, settings: dict[str, str] | None = None
    ) -> asyncpg.Connection:
        """A connection of its own, outside the pool, set up as the pooled ones are.

        For a session that must outlive any one statement (``LISTEN``, an
        advisory lock); ``settings`` adds server settings for it. The caller
        closes it. Outages raise as asyncpg raises them.
        """
        return await asyncpg.connect(
            self.dsn,
            timeout=timeout,
            server_settings={**self._session_settings(), **(settings or {})},
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def execute(self, sql: str, *params: Any) -> int:
        async with self._connection() as conn:
            return _count(await conn.execute(to_dollar(sql), *params))

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        async with self._connection() as conn:
            await conn.executemany(to_dollar(sql), rows)

    async def fetchall(self, sql: str, *params: Any) -> list[Row]:
        async with self._connection() as conn:
            return [dict(r) for r in await conn.fetch(to_dollar(sql), *params)]

    async def transaction(
        self, statements: list[Statement], expect: Sequence[int | None] | None = None
    ) -> list[int]:
        async with self._connection() as conn, conn.transaction():
            counts = []
            for index, (sql, params) in enumerate(statements):
                counts.append(_count(await conn.execute(to_dollar(sql), *params)))
                check_rows(index, counts[-1], expect)
            return counts
