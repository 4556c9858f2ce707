"""Change notices between the gateway processes that share one store.

A process that changes shared state (a policy revision, an incident, a
route's containment) publishes a short notice; the other processes, on
hearing it, read what changed from the store. A notice is a hint that saves
waiting, never the data itself, and it can be lost: a process restarting,
PostgreSQL restarting. So every process also heals, that is re-reads the
shared state, on a timer and after each reconnect.

On PostgreSQL notices travel by ``LISTEN``/``NOTIFY`` on one connection
kept for the purpose. On SQLite (one process, or several workers on one
machine) there is nothing to carry them: the heal timers alone make the
workers converge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from gateway.errors import StoreUnavailable
from gateway.retry import delay
from gateway.store.base import Store
from gateway.store.postgres import PostgresStore

log = logging.getLogger(__name__)

Callback = Callable[[str], Awaitable[None]]
Heal = Callable[[], Awaitable[None]]

# our names, kept short: PostgreSQL cuts channel names at 63 bytes
CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
# PostgreSQL refuses a payload of 8000 bytes or more; the origin rides along
MAX_PAYLOAD = 7900
_MAX_IDENTIFIER = 63
# how long a stop lets callbacks and heals in progress finish before cutting them
STOP_GRACE = 2.0


def check_channel(channel: str) -> None:
    if not CHANNEL.fullmatch(channel):
        raise ValueError(f"invalid notice channel {channel!r}: want {CHANNEL.pattern}")


def check_payload(payload: str) -> None:
    if len(payload.encode()) > MAX_PAYLOAD:
        raise ValueError(f"a notice payload is at most {MAX_PAYLOAD} bytes")


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class _Healer:
    """One reconciliation: never two runs of it at once, and a failure is only logged."""

    def __init__(self, seconds: float, heal: Heal) -> None:
        self.seconds = seconds
        self.heal = heal
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        async with self.lock:
            try:
                await self.heal()
            except StoreUnavailable as exc:
                log.warning("reconciliation %s: %s", _name(self.heal), exc)
            except Exception:
                log.exception("reconciliation %s failed", _name(self.heal))

    async def every(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            await self.run()


class Broadcast(ABC):
    """Fan-out of change notices to every other process sharing the store."""

    def __init__(self) -> None:
        # unique per process: a process never hears its own notices
        self.origin = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._subscribers: dict[str, list[Callback]] = {}
        self._healers: list[_Healer] = []
        self._timers: list[asyncio.Task[None]] = []
        # callbacks and heals in progress, finished or cut short by ``stop``
        self._tasks: set[asyncio.Task[Any]] = set()
        # one lock per channel: its notices are handled one at a time, in order
        self._order: dict[str, asyncio.Lock] = {}
        self._running = False

    async def start(self) -> None:
        """Start listening and the heal timers; an outage is retried in the background."""
        self._running = True
        for healer in self._healers:
            self._start_timer(healer)
        await self._connect()

    async def stop(self) -> None:
        """Stop listening and healing; callbacks in progress get a short grace."""
        self._running = False
        await self._disconnect()
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @abstractmethod
    async def publish(self, channel: str, payload: str = "") -> None:
        """Tell the other processes; best effort, an outage is logged, never raised."""

    def subscribe(self, channel: str, callback: Callback) -> None:
        """Call ``callback(payload)`` for each notice another process publishes on ``channel``."""
        check_channel(channel)
        first = channel not in self._subscribers
        self._subscribers.setdefault(channel, []).append(callback)
        if first:
            self._subscribed(channel)

    def every(self, seconds: float, heal: Heal) -> None:
        """Run ``heal()`` every ``seconds``, and once after each reconnect."""
        if seconds <= 0:
            raise ValueError("a heal period must be positive")
        healer = _Healer(seconds, heal)
        self._healers.append(healer)
        if self._running:
            self._start_timer(healer)

    # -- for the backends ------------------------------------------------------------------
    async def _connect(self) -> None:
        """Begin carrying notices (the backend's part of ``start``); must not raise."""
        # nothing to carry by default (a single process)
        return None

    async def _disconnect(self) -> None:
        """Stop carrying notices (the backend's part of ``stop``)."""
        return None

    def _subscribed(self, channel: str) -> None:
        """A channel got its first subscriber."""
        return None

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_timer(self, healer: _Healer) -> None:
        self._timers.append(
            asyncio.get_running_loop().create_task(
                healer.every(), name=f"heal-{_name(healer.heal)}"
            )
        )

    def _heal_all(self) -> None:
        """Run every heal once now: notices may have been missed."""
        for healer in self._healers:
            self._spawn(healer.run(), f"heal-{_name(healer.heal)}")

    def _hear(self, channel: str, payload: str) -> None:
        if not self._running:
            return
        self._spawn(self._dispatch(channel, payload), f"notice-{channel}")

    async def _dispatch(self, channel: str, payload: str) -> None:
        async with self._order.setdefault(channel, asyncio.Lock()):
            for callback in list(self._subscribers.get(channel, ())):
                try:
                    await callback(payload)
                except Exception:
                    log.exception("change notice on %s: %s failed", channel, _name(callback))


class LocalBroadcast(Broadcast):
    """No other process to tell (SQLite); heal timers still run."""

    async def publish(self, channel: str, payload: str = "") -> None:
        # checked all the same, so what runs here also runs on PostgreSQL
        check_channel(channel)
        check_payload(payload)


class PostgresBroadcast(Broadcast):
    """``LISTEN`` on a connection of its own; ``NOTIFY`` through the store's pool."""

    # seconds between checks that a quiet connection is still alive (a link that
    # died without a word would otherwise leave this process deaf)
    ping_every = 10.0
    ping_timeout = 5.0
    publish_timeout = 5.0
    connect_timeout = 10.0
    # how long ``start`` waits for the first connection before going on without
    start_wait = 5.0

    def __init__(self, store: PostgresStore) -> None:
        super().__init__()
        self.store = store
        self._prefix = self._channel_prefix(store.schema)
        self._conn: asyncpg.Connection | None = None
        # one operation at a time on the listening connection
        self._conn_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()

    @staticmethod
    def _channel_prefix(schema: str | None) -> str:
        # notices are database-wide: a schema of its own must mean channels of its own
        if not schema:
            return "gateway_"
        prefix = f"gateway_{schema}_"
        if len(prefix.encode()) + 32 > _MAX_IDENTIFIER:
            prefix = f"gateway_{hashlib.sha256(schema.encode()).hexdigest()[:16]}_"
        return prefix

    def wire(self, channel: str) -> str:
        """The PostgreSQL channel that carries ``channel``."""
        check_channel(channel)
        return self._prefix + channel

    async def publish(self, channel: str, payload: str = "") -> None:
        wire = self.wire(channel)
        check_payload(payload)
        try:
            await asyncio.wait_for(
                self.store.execute("SELECT pg_notify(?, ?)", wire, f"{self.origin}:{payload}"),
                self.publish_timeout,
            )
        except Exception as exc:
            # the others catch up at their next heal
            log.warning("change notice on %s not sent (%s)", channel, type(exc).__name__)

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def listener_pid(self) -> int | None:
        """The server process of the listening connection (for ``pg_stat_activity``)."""
        conn = self._conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    async def _connect(self) -> None:
        self._attempted.clear()
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="change-notices"
        )
        # usually the first try succeeds at once, and notices flow when start returns
        try:
            await asyncio.wait_for(self._attempted.wait(), self.start_wait)
        except TimeoutError:
            log.warning("change notices: PostgreSQL is slow to answer; going on without")

    async def _disconnect(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._drop()

    def _subscribed(self, channel: str) -> None:
        if self.listening:
            self._spawn(self._listen_one(channel), f"listen-{channel}")

    async def _listen_one(self, channel: str) -> None:
        async with self._conn_lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                # the next connection listens on every channel
                return
            try:
                await conn.add_listener(self.wire(channel), self._heard)
            except Exception as exc:
                log.warning("change notices: cannot listen on %s (%s)", channel, type(exc).__name__)
                conn.terminate()

    def _heard(self, _conn: Any, _pid: int, wire: str, raw: str) -> None:
        origin, _, payload = raw.partition(":")
        if origin == self.origin or not wire.startswith(self._prefix):
            return
        self._hear(wire[len(self._prefix) :], payload)

    async def _supervise(self) -> None:
        failures = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await self._open(lost)
            except Exception as exc:
                failures += 1
                wait = delay(failures, first=0.5, cap=30.0)
                # the class only: asyncpg's messages can carry the host and user
                log.warning(
                    "change notices: cannot listen on PostgreSQL (%s); trying again in %.1fs",
                    type(exc).__name__,
                    wait,
                )
                self._attempted.set()
                await asyncio.sleep(wait)
                continue
            if failures:
                log.warning("change notices: listening on PostgreSQL again")
            failures = 0
            self._attempted.set()
            # whatever was published while nobody here listened is read from the store
            self._heal_all()
            await self._watch(conn, lost)
            await self._drop()
            log.warning("change notices: the PostgreSQL connection was lost; reconnecting")

    async def _open(self, lost: asyncio.Event) -> asyncpg.Connection:
        conn = await self.store.connect(timeout=self.connect_timeout)
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            async with self._conn_lock:
                for channel in list(self._subscribers):
                    await conn.add_listener(self.wire(channel), self._heard)
                self._conn = conn
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return once ``conn`` is lost, or has stopped answering."""
        while not conn.is_closed():
            try:
                await asyncio.wait_for(lost.wait(), self.ping_every)
                return
            except TimeoutError:
                pass
            try:
                async with self._conn_lock:
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), self.ping_timeout)
            except Exception:
                return

    async def _drop(self) -> None:
        async with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 2.0)
        except Exception:
            conn.terminate()


def open_broadcast(store: Store) -> Broadcast:
    """The broadcast for processes sharing ``store`` (not yet started)."""
    if isinstance(store, PostgresStore):
        return PostgresBroadcast(store)
    return LocalBroadcast()


__all__ = ["Broadcast", "LocalBroadcast", "PostgresBroadcast", "open_broadcast"]
