"""Outcome feedback: what happened after an answer, reported by the client.

A recommender learns whether its suggestion was clicked, a lender whether an
offer was accepted and repaid, a reviewer or a user whether a policy got a
case right. Clients post these outcomes, keyed by the decision id the
gateway returned, to ``POST /governance/v1/feedback`` (one event) or
``POST /governance/v1/feedback/batch`` (up to 1,000). Each event carries the
client's own ``event_id``: the store keeps one row per id, so an event sent
again (a retry after a lost answer) is acknowledged as a duplicate and
counted once. New events feed the outcome monitors (``windows.py``);
``GET /governance/v1/feedback/labels`` reports, per policy and week, how
the labels compare with what the policy did.

An event about a decision the store does not hold is accepted and marked
(``decision_found: false``): the decision log writes records in batches off
the request path, so a fast click can arrive first, and an old record may
have been removed by retention. Refusing would lose an outcome the client
cannot send any better.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints, ValidationError, model_validator

from gateway.errors import BadRequest
from gateway.monitors.windows import AGREE, FALSE_POSITIVE, MISS, Outcome, OutcomeType
from gateway.store.base import Statement, Store
from gateway.strict import Strict
from gateway.web.openapi import ApiModel

# a batch is one transaction; this keeps it well under the admin listener's 1 MiB body
MAX_BATCH = 1000
# decision ids looked up per query
_LOOKUP_CHUNK = 200

# ids are printable ASCII without spaces: UUIDs, ULIDs, the gateway's hex decision ids
_Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
_CohortValue = Annotated[str, StringConstraints(max_length=200)] | bool | int | float


class Label(Strict):
    # the policy the label is about, and whether it should have breached on this answer
    policy: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    should_breach: bool


class FeedbackEvent(Strict):
    event_id: _Id
    decision_id: _Id
    type: OutcomeType
    # the outcome happened (clicked, accepted, repaid, thumbs down); false: it was
    # offered and did not (an impression without a click, a declined offer, a default)
    value: bool = True
    # when it happened: ISO 8601 (UTC when no offset is given) or Unix seconds;
    # when the gateway received it, if left out
    at: datetime | None = None
    # attributes an outcome monitor may group by (``outcome.cohort.attribute``)
    cohort: dict[Annotated[str, StringConstraints(max_length=100)], _CohortValue] = Field(
        default_factory=dict, max_length=20
    )
    label: Label | None = None

    @model_validator(mode="after")
    def _label_only_for_labels(self) -> FeedbackEvent:
        if self.type == "label" and self.label is None:
            raise ValueError("a label event needs label: {policy, should_breach}")
        if self.type != "label" and self.label is not None:
            raise ValueError(f"a {self.type} event takes no label")
        return self

    def timestamp(self, received: float) -> float:
        if self.at is None:
            return received
        at = self.at if self.at.tzinfo is not None else self.at.replace(tzinfo=UTC)
        return at.timestamp()


class FeedbackBatch(Strict):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_BATCH)


# -- what the API answers (the OpenAPI document) -------------------------------------------------
class FeedbackAck(ApiModel):
    event_id: str
    # accepted: stored and counted now; duplicate: an event with this id was stored before
    status: str
    decision_found: bool


class FeedbackBatchAck(ApiModel):
    accepted: int
    duplicates: int
    results: list[FeedbackAck]


class LabelWeek(ApiModel):
    week: str
    start: float
    policy: str
    labels: int
    agree: int
    false_positives: int
    misses: int
    unjudged: int
    disagreement: float | None


class LabelReport(ApiModel):
    since: float
    weeks: list[LabelWeek]


# -- parsing ---------------------------------------------------------------------------------
def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _invalid(exc: ValidationError) -> BadRequest:
    """One 400 naming every field that is wrong, as ``events[2].label.policy: ...``."""
    problems = []
    for err in exc.errors(include_url=False):
        where = _where(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return BadRequest("invalid feedback: " + "; ".join(problems))


def parse_event(body: Mapping[str, Any]) -> FeedbackEvent:
    try:
        return FeedbackEvent.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def parse_batch(body: Mapping[str, Any]) -> list[FeedbackEvent]:
    try:
        return list(FeedbackBatch.model_validate(body).events)
    except ValidationError as exc:
        raise _invalid(exc) from None


def verdict(record: Mapping[str, Any] | None, label: Label) -> str | None:
    """How ``label`` compares with what its policy did; None when that is unknown."""
    if record is None:
        return None
    for pv in record.get("policies") or []:
        if isinstance(pv, dict) and pv.get("id") == label.policy:
            status = pv.get("status")
            if status not in ("breach", "pass"):
                return None  # an error, skipped or unscanned check says nothing either way
            breached = status == "breach"
            if breached == label.should_breach:
                return AGREE
            return FALSE_POSITIVE if breached else MISS
    return None


# -- the store -------------------------------------------------------------------------------
class FeedbackStore:
    """The ``feedback_events`` table (migration 16) and the decisions it refers to."""

    def __init__(self, store: Store):
        self.store = store

    async def decisions(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The decision records the store holds, by id."""
        found: dict[str, dict[str, Any]] = {}
        unique = sorted(set(ids))
        for i in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[i : i + _LOOKUP_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows = await self.store.fetchall(
                f"SELECT id, record FROM decisions WHERE id IN ({marks})", *chunk
            )
            for row in rows:
                found[row["id"]] = json.loads(row["record"])
        return found

    async def insert(
        self,
        events: list[FeedbackEvent],
        records: Mapping[str, Mapping[str, Any]],
        sender: str,
        now: float,
    ) -> list[tuple[bool, Outcome, str]]:
        """Store the events in one transaction; per event: (new, what monitors read, route)."""
        statements: list[Statement] = []
        read: list[tuple[Outcome, str]] = []
        for ev in events:
            record = records.get(ev.decision_id)
            route = str(record.get("route") or "") if record is not None else ""
            judged = verdict(record, ev.label) if ev.label is not None else None
            statements.append(
                (
                    "INSERT INTO feedback_events (event_id, decision_id, type, value, at, "
                    "received_at, received_by, decision_found, route, cohort, policy, "
                    "should_breach, verdict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    (
                        ev.event_id,
                        ev.decision_id,
                        ev.type,
                        int(ev.value),
                        ev.timestamp(now),
                        now,
                        sender,
                        int(record is not None),
                        route or None,
                        json.dumps(ev.cohort, sort_keys=True),
                        ev.label.policy if ev.label else None,
                        int(ev.label.should_breach) if ev.label else None,
                        judged,
                    ),
                )
            )
            read.append(
                (
                    Outcome(
                        type=ev.type,
                        value=ev.value,
                        cohort=ev.cohort,
                        record=record,
                        policy=ev.label.policy if ev.label else None,
                        verdict=judged,
                    ),
                    route,
                )
            )
        counts = await self.store.transaction(statements)
        return [(n == 1, outcome, route) for n, (outcome, route) in zip(counts, read, strict=True)]

    async def label_report(self, since: float, policy: str | None = None) -> list[dict[str, Any]]:
        """Per ISO week (UTC) and policy: labels, agreements, false positives, misses."""
        sql = (
            "SELECT event_id, decision_id, decision_found, at, policy, should_breach, verdict "
            "FROM feedback_events WHERE type = ? AND at >= ?"
        )
        params: list[Any] = ["label", since]
        if policy:
            sql += " AND policy = ?"
            params.append(policy)
        rows = await self.store.fetchall(sql, *params)
        await self._judge_late(rows)
        weeks: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            day = datetime.fromtimestamp(row["at"], UTC)
            year, week, weekday = day.isocalendar()
            name = f"{year}-W{week:02d}"
            entry = weeks.get((name, row["policy"]))
            if entry is None:
                start = datetime.fromisocalendar(year, week, 1).replace(tzinfo=UTC)
                entry = weeks[(name, row["policy"])] = {
                    "week": name,
                    "start": start.timestamp(),
                    "policy": row["policy"],
                    "labels": 0,
                    "agree": 0,
                    "false_positives": 0,
                    "misses": 0,
                    "unjudged": 0,
                }
            entry["labels"] += 1
            key = {AGREE: "agree", FALSE_POSITIVE: "false_positives", MISS: "misses"}.get(
                row["verdict"], "unjudged"
            )
            entry[key] += 1
        out = []
        for entry in weeks.values():
            judged = entry["labels"] - entry["unjudged"]
            wrong = entry["false_positives"] + entry["misses"]
            entry["disagreement"] = round(wrong / judged, 4) if judged else None
            out.append(entry)
        out.sort(key=lambda e: (-e["start"], e["policy"]))
        return out

    async def _judge_late(self, rows: list[dict[str, Any]]) -> None:
        """Judge labels that came before their decision record, now that it may be stored."""
        waiting = [r for r in rows if not r["decision_found"]]
        if not waiting:
            return
        records = await self.decisions([r["decision_id"] for r in waiting])
        statements: list[Statement] = []
        for row in waiting:
            record = records.get(row["decision_id"])
            if record is None:
                continue
            label = Label(policy=row["policy"], should_breach=bool(row["should_breach"]))
            row["verdict"] = verdict(record, label)
            row["decision_found"] = 1
            statements.append(
                (
                    "UPDATE feedback_events SET decision_found = 1, route = ?, verdict = ? "
                    "WHERE event_id = ?",
                    (record.get("route"), row["verdict"], row["event_id"]),
                )
            )
        if statements:
            await self.store.transaction(statements)


def weeks_param(raw: str | None, default: int = 8, top: int = 104) -> int:
    if raw is None or raw == "":
        return default
    try:
        weeks = int(raw)
    except ValueError:
        raise BadRequest("weeks must be a whole number from 1 to 104") from None
    if not 1 <= weeks <= top:
        raise BadRequest("weeks must be a whole number from 1 to 104")
    return weeks


def week_start(now: float, weeks: int) -> float:
    """The Monday 00:00 UTC that begins the report of the last ``weeks`` ISO weeks."""
    day = datetime.fromtimestamp(now, UTC)
    year, week, _ = day.isocalendar()
    monday = datetime.fromisocalendar(year, week, 1).replace(tzinfo=UTC)
    return monday.timestamp() - (weeks - 1) * 7 * 86400
