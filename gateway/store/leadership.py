"""Which process of those sharing a store applies the shared signals: the leader.

Incident deduplication, breach windows and monitor windows need one process
to see every signal. Every process competes for one lock the store's own
engine keeps, and whoever holds it leads until it dies or loses the store:

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a
  connection kept for it. PostgreSQL frees it the moment that connection
  ends: at once when the leader's process dies, within about ten seconds
  when its host dies or is cut off (``PEER_CHECKS``).
- SQLite: an ``flock`` on a file beside the database, which is only shared by
  processes of one machine (workers); the kernel frees it when the process dies.

A leader that loses its connection steps down at the next check (once a
second), before trying to lead again. Two processes can still both believe
they lead for a moment (the old one has not checked yet): every write the
leader makes removes the queue items it applied, all of them or the write is
undone (``Plan.fenced``), so the one that commits second writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from gateway.store.base import Store
from gateway.store.postgres import PostgresStore

log = logging.getLogger(__name__)

# seconds between checks that the lock is still held (or free to take)
CHECK_INTERVAL = 1.0
# seconds between two log lines saying leadership cannot be competed for
COMPLAIN_EVERY = 60.0
# PostgreSQL drops the lock connection, and so frees the lock, within about ten
# seconds of its peer going silent (a crashed host, a partition), instead of the
# two hours of the kernel's default keepalive; the leader's own checks (a query
# each second, five seconds to answer) make it step down before that
PEER_CHECKS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


def lock_key(name: str, scope: str) -> int:
    """A 63-bit advisory-lock key for ``name`` within ``scope`` (the schema)."""
    digest = hashlib.blake2b(f"{scope}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class Leadership:
    """Compete for leadership of ``name`` among the processes sharing ``store``."""

    def __init__(self, store: Store, name: str = "signals") -> None:
        self.store = store
        self.name = name
        self.leader = False
        self._listeners: list[Callable[[bool], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._pg: asyncpg.Connection | None = None
        self._fd: int | None = None
        self._complained = -COMPLAIN_EVERY

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """``callback(leader)`` runs in the event loop whenever this process gains or loses it."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Try once now (a lone process leads from its first batch), then keep trying."""
        await self._check()
        self._task = asyncio.create_task(self._run(), name=f"leadership-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._release()
        self._set(False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            await self._check()

    async def _check(self) -> None:
        try:
            held = await (
                self._check_pg() if self.store.dialect == "postgresql" else self._check_file()
            )
        except Exception as exc:  # the store is down: nobody can lead through it
            now = time.monotonic()
            if self.leader:
                log.warning("leadership of %s lost: %s", self.name, type(exc).__name__)
            elif now - self._complained > COMPLAIN_EVERY:
                # a lasting cause (the server out of connections) must show in the log
                log.warning(
                    "cannot compete for leadership of %s: %s", self.name, type(exc).__name__
                )
                self._complained = now
            await self._release()
            held = False
        self._set(held)

    def _set(self, leader: bool) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        log.info("this process %s leads %s", "now" if leader else "no longer", self.name)
        for callback in self._listeners:
            try:
                callback(leader)
            except Exception:
                log.exception("a leadership listener failed")

    # -- PostgreSQL ---------------------------------------------------------------------
    async def _check_pg(self) -> bool:
        if self._pg is not None and not self._pg.is_closed():
            # still ours while the connection lives; a query proves it does
            await self._pg.fetchval("SELECT 1", timeout=5)
            return self.leader or await self._try_pg(self._pg)
        store = self.store
        assert isinstance(store, PostgresStore)
        conn = await store.connect(timeout=5, settings=PEER_CHECKS)
        self._pg = conn
        return await self._try_pg(conn)

    async def _try_pg(self, conn: asyncpg.Connection) -> bool:
        scope = getattr(self.store, "schema", None) or "public"
        key = lock_key(self.name, scope)
        return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key, timeout=5))

    # -- SQLite -------------------------------------------------------------------------
    async def _check_file(self) -> bool:
        if self._fd is not None:
            return True
        path = Path(getattr(self.store, "path", ":memory:"))
        if str(path) == ":memory:":
            return True  # a database of one process: it leads
        fd = os.open(path.with_name(f"{path.name}.{self.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def _release(self) -> None:
        if self._pg is not None:
            conn, self._pg = self._pg, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
