"""``Plan``: everything one batch of signals (or one API call) writes, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.incidents.model import Incident
from gateway.store.base import Statement
from gateway.store.queue import SharedQueue


@dataclass
class Plan:
    dirty: dict[str, Incident] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    # rows were added to the outbox: wake its sender after the commit
    outbox: bool = False
    # a route's switch changed: tell the other processes after the commit
    containment: bool = False
    # statements that must change exactly so many rows or the write is undone: the
    # removal of shared-queue items this leader applied, which a process that led
    # before or after it (both believing they lead, for a moment) may have removed
    fenced: list[tuple[Statement, int]] = field(default_factory=list)
    # the shared-queue items those removals take, told once the write commits
    taken: list[tuple[SharedQueue, list[str]]] = field(default_factory=list)

    def merge(self, other: Plan) -> None:
        self.dirty.update(other.dirty)
        self.statements.extend(other.statements)
        self.outbox = self.outbox or other.outbox
        self.containment = self.containment or other.containment
        self.fenced.extend(other.fenced)
        self.taken.extend(other.taken)

    def remove(self, queue: SharedQueue, ids: list[str]) -> None:
        """Remove ``ids`` from ``queue`` in this write, all of them or nothing at all."""
        for statement in queue.removal(ids):
            self.fenced.append((statement, len(ids)))
        self.taken.append((queue, ids))

    def all(self) -> list[Statement]:
        # the fenced statements first: a write that lost the race fails before the rest
        return (
            [s for s, _ in self.fenced]
            + self.statements
            + [inc.upsert() for inc in self.dirty.values()]
        )

    def expected(self) -> list[int | None]:
        return [n for _, n in self.fenced]

    def committed(self) -> None:
        for queue, ids in self.taken:
            queue.removed(ids)

    def __bool__(self) -> bool:
        return bool(self.dirty or self.statements or self.fenced)
