"""SQLite backend: one connection on one dedicated thread, WAL, fsync on commit."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.store.base import Row, Statement, Store
from gateway.store.migrations import MIGRATIONS


def sqlite_path(url: str) -> str:
    path = url[len("sqlite://") :]
    if path in ("", "/:memory:", ":memory:"):
        return ":memory:"
    return path[1:] if path.startswith("/") else path


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: str):
        self.path = sqlite_path(url)
        self._conn: sqlite3.Connection | None = None
        # sqlite3 objects must stay on the thread that made them
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def _run(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we acknowledge anything built on it
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT, applied_at DOUBLE PRECISION)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, statements in sorted(MIGRATIONS, key=lambda m: m[0]):
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in statements:
                    conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time())
                )
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def execute(self, sql: str, *params: Any) -> int:
        return await self._run(lambda: self.conn.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        def work() -> None:
            conn = self.conn
            conn.execute("BEGIN")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise

        await self._run(work)

    async def fetchall(self, sql: str, *params: Any) -> list[Row]:
        return await self._run(lambda: [dict(r) for r in self.conn.execute(sql, params).fetchall()])

    async def transaction(self, statements: list[Statement]) -> list[int]:
        def work() -> list[int]:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                counts = [conn.execute(sql, params).rowcount for sql, params in statements]
                conn.execute("COMMIT")
                return counts
            except Exception:
                conn.execute("ROLLBACK")
                raise

        return await self._run(work)
