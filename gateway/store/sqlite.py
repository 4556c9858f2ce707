"""SQLite backend: one connection on one dedicated thread, WAL, fsync on commit.

The database holds request and response text, so it and its ``-wal`` and
``-shm`` files are mode 0600 (SQLite gives those the database's own mode).
A database that cannot be used right now (locked, closed, unreadable,
corrupt, disk full) raises ``StoreUnavailable``; a wrong statement keeps its
own ``sqlite3`` error, as it is a bug and not an outage.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.store.base import Row, Statement, Store, check_rows
from gateway.store.files import open_private, private_dir, tighten_file
from gateway.store.migrations import MIGRATIONS

# primary result codes that say the database cannot be used now, not that our SQL is wrong
_OUTAGE = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
}
# UPDATE … RETURNING came in 3.35
MIN_VERSION = (3, 35, 0)
# files SQLite keeps beside the database, with the same contents at times
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _is_outage(exc: sqlite3.Error) -> bool:
    if isinstance(exc, sqlite3.ProgrammingError):
        return "closed" in str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _OUTAGE


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
        self._closed = False
        # sqlite3 objects must stay on the thread that made them
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def _run(self, fn, *args):
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            if _is_outage(exc):
                raise StoreUnavailable(f"the SQLite store is unavailable: {exc}") from exc
            raise

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_VERSION:
            # the incident outbox claims its rows with UPDATE … RETURNING
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old for the store; it needs "
                f"{'.'.join(map(str, MIN_VERSION))} or later"
            )
        if self.path != ":memory:":
            self._private_files()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we acknowledge anything built on it
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        self._migrate(conn)

    def _private_files(self) -> None:
        path = Path(self.path)
        if not path.parent.exists():
            # a folder we make is ours; an existing one may be shared, so it keeps its mode
            private_dir(path.parent)
        # made 0600 before SQLite writes a byte into it (SQLite's own default is 0644)
        if not path.exists():
            os.close(open_private(path, os.O_RDWR | os.O_CREAT))
        for suffix in ("", *_SIDE_FILES):
            tighten_file(path.with_name(path.name + suffix))

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
        self._closed = True
        self._executor.shutdown(wait=True)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the store is not open")
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

    async def transaction(
        self, statements: list[Statement], expect: Sequence[int | None] | None = None
    ) -> list[int]:
        def work() -> list[int]:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                counts = []
                for index, (sql, params) in enumerate(statements):
                    counts.append(conn.execute(sql, params).rowcount)
                    check_rows(index, counts[-1], expect)
                conn.execute("COMMIT")
                return counts
            except Exception:
                conn.execute("ROLLBACK")
                raise

        return await self._run(work)
