"""``Plan``: everything one batch of signals (or one API call) writes, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.incidents.model import Incident
from gateway.store.base import Statement


@dataclass
class Plan:
    dirty: dict[str, Incident] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    # rows were added to the outbox: wake its sender after the commit
    outbox: bool = False
    # a route's switch changed: tell the other processes after the commit
    containment: bool = False

    def merge(self, other: Plan) -> None:
        self.dirty.update(other.dirty)
        self.statements.extend(other.statements)
        self.outbox = self.outbox or other.outbox
        self.containment = self.containment or other.containment

    def all(self) -> list[Statement]:
        return self.statements + [inc.upsert() for inc in self.dirty.values()]

    def __bool__(self) -> bool:
        return bool(self.dirty or self.statements)
