"""The incident service: signals in, incident changes out, off the hot path.

The request path only appends each decision record (and each monitor event)
to a queue. A background task drains it in batches, runs the rules over it
(``signals``), updates the open incidents (``book``), and writes everything
one batch caused (incident rows, timeline events, outbox rows, containment
switches) in one store transaction. Containment takes effect in memory
before that write, so the very next request sees it. People's actions
(acknowledge, resolve, contain…) go through the same lock and the same
kind of write.

Processes that share a store (replicas on PostgreSQL, or workers) must not
each keep their own windows and open incidents: one process, the leader
(``gateway.store.leadership``), applies the rules and owns the book. Every
process hands its signals to it through a ``SharedQueue``; the leader
removes them in the transaction that writes what they changed. A person's
action taken on another process is queued the same way and waited for.
Containment switches reach every process by a broadcast notice and a
periodic re-read of the ``route_containment`` table.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.config import Settings
from gateway.errors import (
    BadRequest,
    Conflict,
    GatewayError,
    InternalError,
    LeaderUnavailable,
    NotFound,
    StoreUnavailable,
)
from gateway.incidents.book import IncidentBook
from gateway.incidents.containment import ContainmentTable
from gateway.incidents.metrics import IncidentMetrics
from gateway.incidents.model import ACTIVE_STATES, Incident, TimelineEvent
from gateway.incidents.outbox import Outbox
from gateway.incidents.plan import Plan
from gateway.incidents.signals import Matcher
from gateway.policy.reload import PolicyHolder
from gateway.records.containment import MODES, Switch
from gateway.records.decision import DecisionRecord
from gateway.records.monitor import MonitorEvent
from gateway.retry import retry_forever
from gateway.store.base import RowsChanged, Store
from gateway.store.broadcast import Broadcast
from gateway.store.leadership import Leadership
from gateway.store.queue import SharedQueue

log = logging.getLogger(__name__)


def _ignore(count: int) -> None:
    """The commit hook until a journal registers the service."""


MAX_QUEUE = 100_000
# records handled per turn of the event loop: a breach storm must not stall
# the requests sharing the loop for more than a few milliseconds at a time
MAX_BATCH = 256

Signal = DecisionRecord | MonitorEvent
# seconds a stopping gateway waits for the outbox's deliveries in flight
SENDER_GRACE = 5.0
# seconds a person's action queued for the leader is waited for
COMMAND_TIMEOUT = 10.0
# the leader forgets command outcomes older than this
COMMAND_KEEP = 3600.0
# what a queued command's outcome adds to the transaction of the action itself; set
# while the leader applies a command, which also tells the actions not to queue it again
_command_tail: contextvars.ContextVar[Plan | None] = contextvars.ContextVar(
    "command_tail", default=None
)


class IncidentService:
    """Incident rules over decision records and monitor events (a ``Durable`` of the journal)."""

    name = "incidents"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        policies: PolicyHolder,
        metrics: IncidentMetrics,
        leadership: Leadership | None = None,
        broadcast: Broadcast | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.incidents
        self.store = store
        self.policies = policies
        self.metrics = metrics
        self.outbox = Outbox(store, self.cfg, metrics)
        self.table = ContainmentTable(metrics)
        self.book = IncidentBook(self.cfg, settings.routes, metrics, self.outbox, self.table)
        self.matcher = Matcher(self.book)
        self.queue: deque[Signal] = deque()
        self.lock = asyncio.Lock()
        self._turn = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._unwritten = Plan()
        # decision records taken from the bus, and how many of them still wait in the queue;
        # ``committed`` hears how many are applied and written
        self._received = 0
        self._queued = 0
        self.committed: Callable[[int], None] = _ignore
        # shared mode: signals and people's actions go through the store to the leader
        self.leadership = leadership
        self.signals = SharedQueue(store, "incidents")
        self.commands = SharedQueue(store, "incident-commands")
        # a change of leader, seen by the processing task at its next turn
        self._lead_changed = False
        self._notices: set[asyncio.Task[None]] = set()
        # a batch on its way to the shared queue, with the records it stands for
        self._handing: list[tuple[str, tuple[object, ...]]] = []
        self._handing_records = 0
        self.broadcast = broadcast
        if leadership is not None:
            leadership.on_change(self._on_leadership)
        if leadership is not None and broadcast is not None:
            # a switch another process turned on or off, heard at once or read within
            # the reconcile interval; queued signals and actions wake the leader
            broadcast.subscribe("containment", self._containment_notice)
            # workers on one SQLite file have no notices: a re-read of one small
            # table each second keeps them within the 2 s a notice would take
            every = settings.state.reconcile_interval
            if store.dialect == "sqlite":
                every = min(every, 1.0)
            broadcast.every(every, self._heal_containment)
            broadcast.subscribe("incidents", self._incidents_notice)

    @property
    def shared(self) -> bool:
        return self.leadership is not None

    def _asks_leader(self) -> bool:
        """Whether a person's action here is queued for the leader rather than applied.

        Never while applying a queued one: a leader that lost the lock midway
        must not queue the action a second time.
        """
        return not self.leading and _command_tail.get() is None

    @property
    def leading(self) -> bool:
        """Whether this process applies the rules (always, unless the store is shared)."""
        return self.leadership is None or self.leadership.leader

    @property
    def rule_errors(self) -> list[str]:
        return self.matcher.errors

    # -- the hot path: O(1), no I/O ----------------------------------------------------
    def on_decision(self, record: DecisionRecord) -> None:
        self._received += 1
        self._queued += 1
        self._put(record)

    def on_monitor_event(self, event: MonitorEvent) -> None:
        """Take a monitor event; safe from any thread."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(self._put, event)
        else:
            self._put(event)

    def _put(self, item: Signal) -> None:
        if len(self.queue) >= MAX_QUEUE:
            dropped = self.queue.popleft()
            self._queued -= isinstance(dropped, DecisionRecord)
            self.metrics.dropped.inc()
        self.queue.append(item)
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.matcher.refresh(self.policies.current, strict=True)
        if self.leading:
            await self._load_book()
        await self.reload_containment()
        self.book.update_gauges()
        self._task = asyncio.create_task(self._run(), name="incidents")
        self._sender = asyncio.create_task(self.outbox.run(), name="incident-outbox")

    async def _load_book(self) -> None:
        rows = await self.store.fetchall(
            "SELECT * FROM incidents WHERE state IN (?, ?, ?)", *ACTIVE_STATES
        )
        self.book.active.clear()
        self.book.by_id.clear()
        self.book.load(Incident.from_row(row) for row in rows)

    async def reload_containment(self) -> None:
        """Take the switches in force from the store (another process may have changed them)."""
        self.table.load(
            await self.store.fetchall("SELECT * FROM route_containment"),
            {r.name for r in self.settings.routes},
            replace=True,
        )

    async def _containment_notice(self, _payload: str) -> None:
        await self._heal_containment()

    async def _heal_containment(self) -> None:
        # the leader alone writes the switches, and its memory is ahead of the
        # table between a change and its commit: only the others read it back
        if not self.leading:
            await self.reload_containment()

    async def _incidents_notice(self, _payload: str) -> None:
        if self.leading:
            self._wake.set()

    async def _notify(self, channel: str) -> None:
        if self.broadcast is not None and self.shared:
            await self.broadcast.publish(channel)

    def _notify_soon(self, channel: str) -> None:
        """Publish without holding up the caller (who may hold the incident lock)."""
        if self.broadcast is not None and self.shared:
            task = asyncio.get_running_loop().create_task(self._notify(channel))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)

    def _on_leadership(self, leader: bool) -> None:
        self._lead_changed = True
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.settle()
        except Exception as exc:
            log.error("incident events not written at shutdown: %s", exc)
        if self._sender is not None:
            # a delivery in flight finishes and is marked done, or a restart
            # would send it again; only one that hangs is cut short
            self.outbox.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), SENDER_GRACE)
            except TimeoutError:
                self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self.outbox.close()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.tick)
            except TimeoutError:
                pass
            self._wake.clear()
            # the store is down: the plan is kept and written by a later try
            await retry_forever(
                self.process,
                what="writing incident state",
                first=self.cfg.tick,
                cap=10.0,
                give_up=lambda: self._stopping,
            )

    # -- processing ----------------------------------------------------------------------------
    async def process(self) -> None:
        """Drain the queue, apply the rules and the quiet-period checks, write the result."""
        if self.shared:
            await self._process_shared()
            return
        async with self.lock:
            self.matcher.refresh(self.policies.current)
            now = time.time()
            plan = Plan()
            for _ in range(min(len(self.queue), MAX_BATCH)):
                item = self.queue.popleft()
                self._queued -= isinstance(item, DecisionRecord)
                try:
                    if isinstance(item, DecisionRecord):
                        self.matcher.on_record(item, plan, now)
                    else:
                        self.matcher.on_monitor(item, plan, now)
                except Exception:
                    log.exception("incident rules failed on a %s", type(item).__name__)
            self.book.tick(plan, now)
            self.matcher.sweep(now)
            await self._write(plan)
        if self.queue:
            self._wake.set()

    # -- shared mode ------------------------------------------------------------------------------
    async def _process_shared(self) -> None:
        # one turn at a time: a settle() must not find the queue emptied by a turn
        # whose hand-over is still on its way to the store
        async with self._turn:
            await self._forward()
            if self._lead_changed:
                await self._change_leader()
            if self.leading:
                await self._apply_signals()
                await self._apply_commands()

    async def _forward(self) -> None:
        """Hand the queued signals the rules care about to the leader, through the store.

        A batch gets its queue ids once and keeps them until its insert is
        known to have committed: an insert whose commit was lost with the
        connection is sent again with the same ids, which the store ignores,
        so the leader never counts a signal twice.
        """
        self.matcher.refresh(self.policies.current)
        while self._handing or self.queue:
            if not self._handing:
                taken = [self.queue.popleft() for _ in range(min(len(self.queue), MAX_BATCH))]
                self._handing_records = sum(isinstance(item, DecisionRecord) for item in taken)
                self._handing = [
                    statement
                    for _, statement in self.signals.items(
                        [
                            {"r": item.to_json()}
                            if isinstance(item, DecisionRecord)
                            else {"m": item.to_json()}
                            for item in taken
                            if not isinstance(item, DecisionRecord) or self.matcher.wants(item)
                        ]
                    )
                ]
            if self._handing:
                await self.store.transaction(self._handing)
            sent = bool(self._handing)
            self._handing = []
            # the records are in the store now (or needed nothing): no longer only queued here
            self._queued -= self._handing_records
            self._handing_records = 0
            self.committed(self._received - self._queued)
            if sent and not self.leading:
                await self._notify("incidents")

    async def _change_leader(self) -> None:
        """Gained: load the book from the store. Lost: forget it and what was taken."""
        async with self.lock:
            self._lead_changed = False
            await self._resync()

    async def _resync(self) -> None:
        """Drop what this process applied but did not write, and read the book again.

        After a change of leader, or a write fenced off because another
        process removed the same queue items first: the items not removed go
        back to whoever leads, and the windows they fed start again.
        """
        self.signals.release()
        self.commands.release()
        self._unwritten = Plan()
        self.matcher.windows.clear()
        self.matcher.health.clear()
        if self.leading:
            await self._load_book()
        else:
            self.book.active.clear()
            self.book.by_id.clear()
        self.book.update_gauges()

    async def _apply_signals(self) -> None:
        while self.leading:
            async with self.lock:
                self.matcher.refresh(self.policies.current)
                batch = await self.signals.peek(MAX_BATCH)
                now = time.time()
                plan = Plan()
                for _, body in batch:
                    try:
                        if "r" in body:
                            # another process's clock: kept, but never ahead of ours
                            record = DecisionRecord.from_json(body["r"])
                            record = replace(record, ts=min(record.ts or now, now))
                            self.matcher.on_record(record, plan, now)
                        else:
                            self.matcher.on_monitor(MonitorEvent.from_json(body["m"]), plan, now)
                    except Exception:
                        log.exception("incident rules failed on a shared signal")
                self.book.tick(plan, now)
                self.matcher.sweep(now)
                plan.remove(self.signals, [item_id for item_id, _ in batch])
                await self._write(plan)
            if len(batch) < MAX_BATCH:
                return

    async def _apply_commands(self) -> None:
        """Apply people's actions queued by other processes, one at a time."""
        for _ in range(MAX_BATCH):
            if not self.leading:
                return
            taken = await self.commands.peek(1)
            if not taken:
                break
            item_id, body = taken[0]
            tail = Plan()
            tail.remove(self.commands, [item_id])
            tail.statements.append(_outcome(body["id"], "ok"))
            token = _command_tail.set(tail)
            outcome = "ok"
            try:
                await getattr(self, body["op"])(*body["args"])
            except StoreUnavailable:
                # written with the action's own plan, which is retried; or, if the
                # action failed before writing, tried again from the queue
                if tail.fenced:
                    self.commands.untake([item_id])
                raise
            except GatewayError as exc:
                # refused (already acknowledged, no such route…): the outcome alone is written
                outcome = f"{exc.code}:{exc.message}"
            except Exception as exc:
                # a command this version cannot apply (from another version, say):
                # answered, so it does not come back forever
                log.exception("a queued incident action failed")
                outcome = f"internal-error:{type(exc).__name__}"
            finally:
                _command_tail.reset(token)
            if tail.fenced:
                # the action wrote nothing (refused, or nothing to change): its outcome
                # and the command's removal still commit together
                tail.statements = [_outcome(body["id"], outcome)]
                async with self.lock:
                    await self._write(tail)
        await self.store.execute(
            "DELETE FROM incident_commands WHERE created_at < ?", time.time() - COMMAND_KEEP
        )
        await self.signals.prune()
        await self.commands.prune()

    async def _queue_command(self, op: str, *args: object) -> None:
        """Queue a person's action for the leader and wait for its outcome."""
        command_id = uuid.uuid4().hex
        [(item_id, push)] = self.commands.items([{"id": command_id, "op": op, "args": list(args)}])
        await self.store.transaction(
            [
                (
                    "INSERT INTO incident_commands (id, created_at) VALUES (?, ?)",
                    (command_id, time.time()),
                ),
                push,
            ]
        )
        await self._notify("incidents")
        loop = asyncio.get_running_loop()
        end = loop.time() + COMMAND_TIMEOUT
        while True:
            result = await self._command_result(command_id)
            if result is not None:
                _raise_refusal(result)
                return
            if loop.time() >= end:
                break
            await asyncio.sleep(0.05)
        # taken back if no leader has removed it: then it is never applied, and the
        # 503 means just that (a leader applying it now finds it gone and undoes)
        withdrawn = await self.store.execute(
            "DELETE FROM shared_queue WHERE id = ? AND applied_at IS NULL", item_id
        )
        if not withdrawn:
            # a leader removed it, so it committed the action: its outcome is written
            result = await self._command_result(command_id)
            if result is not None:
                _raise_refusal(result)
                return
        raise LeaderUnavailable(
            f"no gateway process applied this action within {COMMAND_TIMEOUT:g}s (none leads "
            "the incident rules right now); it was not applied: try again"
        )

    async def _command_result(self, command_id: str) -> str | None:
        row = await self.store.fetchone(
            "SELECT result FROM incident_commands WHERE id = ?", command_id
        )
        return None if row is None else row["result"]

    async def _write(self, plan: Plan) -> None:
        pending = self._unwritten
        pending.merge(plan)
        tail = _command_tail.get()
        if tail:
            # a queued command's outcome commits with the action itself, exactly once
            pending.merge(tail)
            tail.fenced.clear()
            tail.taken.clear()
            tail.statements.clear()
        if pending:
            try:
                await self.store.transaction(pending.all(), pending.expected())
            except RowsChanged:
                # another process applied these queue items first: this process's
                # view is wrong, and nothing of it was written
                log.warning("another process applied these queued items first; reading again")
                await self._resync()
                return
            self._unwritten = Plan()
            pending.committed()
            self.book.update_gauges()
            if pending.outbox:
                self.outbox.wake()
            if pending.containment:
                self._notify_soon("containment")
        # every record taken off the queue so far is applied, and what it changed written
        self.committed(self._received - self._queued)

    async def replay(self, records: list[DecisionRecord]) -> None:
        """Apply records recovered from a journal, and return once what they changed is written.

        They count as arriving now: the windows assume time only moves
        forward, and a breach from before a crash belongs in the window the
        incident rules see after it. Once applied they are never applied
        again: a failed write is retried here, not by replaying them.
        With a shared store they are handed to the leader like any signal.
        """
        if self.shared:
            self.matcher.refresh(self.policies.current)
            bodies = [{"r": r.to_json()} for r in records if self.matcher.wants(r)]
            await self.signals.push(bodies)
            return
        async with self.lock:
            self.matcher.refresh(self.policies.current)
            now = time.time()
            plan = Plan()
            for record in records:
                try:
                    self.matcher.on_record(replace(record, ts=now), plan, now)
                except Exception:
                    log.exception("incident rules failed on a replayed record")
            self.book.tick(plan, now)
            self._unwritten.merge(plan)
        written = await retry_forever(
            self._write_pending,
            what="writing replayed incident state",
            first=self.cfg.tick,
            cap=10.0,
            give_up=lambda: self._stopping,
        )
        if not written:
            raise RuntimeError("stopped before the replayed incident state was written")

    async def _write_pending(self) -> None:
        async with self.lock:
            await self._write(Plan())

    async def settle(self) -> None:
        """Process everything queued so far (the API reads after it, and tests wait on it)."""
        await self.process()
        while self.queue:
            await self.process()

    # -- reading ---------------------------------------------------------------------------------
    async def get(self, incident_id: str) -> Incident:
        inc = self.book.by_id.get(incident_id)
        if inc is not None:
            return inc
        row = await self.store.fetchone("SELECT * FROM incidents WHERE id = ?", incident_id)
        if row is None:
            raise NotFound(f"no incident {incident_id}")
        return Incident.from_row(row)

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        rows = await self.store.fetchall(
            "SELECT * FROM incident_events WHERE incident_id = ? ORDER BY seq", incident_id
        )
        return [TimelineEvent.from_row(r) for r in rows]

    async def detail(self, incident_id: str) -> dict[str, Any]:
        """An incident with its timeline and the switches it holds, as the API shows it."""
        inc = await self.get(incident_id)
        out = inc.as_dict()
        out["timeline"] = [e.as_dict() for e in await self.timeline(incident_id)]
        out["containment"] = [s.to_json() for s in self.table.of_incident(incident_id)]
        return out

    async def list(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        route: str | None = None,
        policy: str | None = None,
        source: str | None = None,
        active: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        clauses, params = [], []
        for column, value in (
            ("state", state),
            ("severity", severity),
            ("route", route),
            ("policy", policy),
            ("source", source),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if active is not None:
            marks = ", ".join("?" for _ in ACTIVE_STATES)
            clauses.append(f"state {'IN' if active else 'NOT IN'} ({marks})")
            params.extend(ACTIVE_STATES)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.store.fetchall(
            f"SELECT * FROM incidents {where} ORDER BY opened_at DESC LIMIT ?", *params, limit
        )
        # the in-memory copy is ahead of the row between two batch writes
        return [(self.book.by_id.get(r["id"]) or Incident.from_row(r)).summary() for r in rows]

    # -- people's actions ------------------------------------------------------------------------
    async def _mutate(self, incident_id: str, change: Callable[[Incident, Plan], None]) -> Incident:
        async with self.lock:
            # decisions already queued belong before a person's action
            plan = Plan()
            inc = await self.get(incident_id)
            change(inc, plan)
            plan.dirty[inc.id] = inc
            await self._write(plan)
            return inc

    async def acknowledge(self, incident_id: str, actor: str, note: str = "") -> Incident:
        if self._asks_leader():
            await self._queue_command("acknowledge", incident_id, actor, note)
            return await self.get(incident_id)

        def change(inc: Incident, plan: Plan) -> None:
            if not inc.active:
                raise Conflict(f"incident {inc.id} is {inc.state}; only open ones are acknowledged")
            if inc.acknowledged_at is not None:
                raise Conflict(f"incident {inc.id} is already acknowledged")
            inc.acknowledged_at = time.time()
            if inc.state == "open":
                self.book.set_state(inc, "acknowledged")
            self.book.event(
                inc,
                "acknowledged",
                actor,
                note or f"acknowledged by {actor}",
                plan,
                sink_event="acknowledge",
            )

        return await self._mutate(incident_id, change)

    async def note(self, incident_id: str, actor: str, text: str) -> Incident:
        if self._asks_leader():
            await self._queue_command("note", incident_id, actor, text)
            return await self.get(incident_id)
        if not text.strip():
            raise BadRequest("a note needs text")

        def change(inc: Incident, plan: Plan) -> None:
            self.book.event(inc, "note", actor, text[:10_000], plan, sink_event="note")

        return await self._mutate(incident_id, change)

    async def mark_contained(self, incident_id: str, actor: str, note: str = "") -> Incident:
        if self._asks_leader():
            await self._queue_command("mark_contained", incident_id, actor, note)
            return await self.get(incident_id)

        def change(inc: Incident, plan: Plan) -> None:
            if inc.state == "contained":
                raise Conflict(f"incident {inc.id} is already contained")
            self.book.set_state(inc, "contained")
            inc.contained_at = time.time()
            self.book.event(
                inc,
                "contained",
                actor,
                note or f"marked contained by {actor}",
                plan,
                data={"manual": True},
                sink_event="contain",
            )

        return await self._mutate(incident_id, change)

    async def resolve(self, incident_id: str, actor: str, note: str = "") -> Incident:
        if self._asks_leader():
            await self._queue_command("resolve", incident_id, actor, note)
            return await self.get(incident_id)

        def change(inc: Incident, plan: Plan) -> None:
            self.book.resolve(inc, actor, note or f"resolved by {actor}", plan)

        return await self._mutate(incident_id, change)

    async def postmortem_done(self, incident_id: str, actor: str) -> Incident:
        if self._asks_leader():
            await self._queue_command("postmortem_done", incident_id, actor)
            return await self.get(incident_id)

        def change(inc: Incident, plan: Plan) -> None:
            self.book.set_state(inc, "postmortem_done")
            self.book.event(
                inc, "postmortem_done", actor, f"post-mortem completed by {actor}", plan
            )

        return await self._mutate(incident_id, change)

    async def link_review(self, incident_id: str, review_id: str, actor: str) -> Incident:
        review_id = review_id.strip()
        if self._asks_leader():
            await self._queue_command("link_review", incident_id, review_id, actor)
            return await self.get(incident_id)
        review_id = review_id.strip()
        if not review_id or len(review_id) > 200:
            raise BadRequest("review_item must be a non-empty id")

        def change(inc: Incident, plan: Plan) -> None:
            if review_id in inc.review_items:
                return
            inc.review_items.append(review_id)
            self.book.event(
                inc,
                "review_linked",
                actor,
                f"review item {review_id} linked",
                plan,
                data={"review_item": review_id},
                sink_event="review_linked",
            )

        return await self._mutate(incident_id, change)

    async def contain_route(
        self,
        route: str,
        mode: str,
        actor: str,
        incident_id: str | None = None,
        reason: str = "",
    ) -> Switch:
        r = self.book.routes.get(route)
        if r is None:
            raise NotFound(f"no route named {route!r}")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}")
        if mode == "fallback" and not r.fallback:
            raise Conflict(f"route {route} has no fallback route to switch to")
        if self._asks_leader():
            await self._queue_command("contain_route", route, mode, actor, incident_id, reason)
            await self.reload_containment()
            return self.table.switches[route]
        async with self.lock:
            plan = Plan()
            inc = await self.get(incident_id) if incident_id else None
            switch = self.book.contain(
                route,
                mode,  # type: ignore[arg-type]
                inc,
                actor,
                reason or f"manual, by {actor}",
                plan,
            )
            await self._write(plan)
            return switch

    async def restore_route(self, route: str, actor: str, reason: str = "") -> Switch:
        if route not in self.book.routes:
            raise NotFound(f"no route named {route!r}")
        if self._asks_leader():
            await self.reload_containment()
            switch = self.table.switches.get(route)
            if switch is None:
                raise Conflict(f"route {route} is not contained")
            await self._queue_command("restore_route", route, actor, reason)
            await self.reload_containment()
            return switch
        async with self.lock:
            switch = self.table.switches.get(route)
            if switch is None:
                raise Conflict(f"route {route} is not contained")
            inc = None
            if switch.incident_id:
                try:
                    inc = await self.get(switch.incident_id)
                except NotFound:
                    inc = None
            plan = Plan()
            self.book.restore(route, actor, reason or f"restored by {actor}", plan, inc)
            await self._write(plan)
            return switch


# the refusals a person's action can meet, by code, to raise them again where it was asked
_REFUSALS: dict[str, type[GatewayError]] = {
    cls.code: cls for cls in (BadRequest, Conflict, NotFound, InternalError)
}


def _outcome(command_id: str, result: str) -> tuple[str, tuple[object, ...]]:
    return (
        "UPDATE incident_commands SET done_at = ?, result = ? WHERE id = ?",
        (time.time(), result, command_id),
    )


def _raise_refusal(result: str) -> None:
    """Raise what the leader refused a queued action with; ``ok`` raises nothing."""
    if result == "ok":
        return
    code, _, message = result.partition(":")
    raise _REFUSALS.get(code, Conflict)(message)
