"""Review items, their audit trail, comments and callback outbox in the store.

Portable SQL on top of ``gateway.store.base.Store``, so SQLite and
PostgreSQL behave the same. Every change to an item is one transaction that
also appends its audit row; the change applies only when the item still has
the version the caller read (optimistic locking), and the audit row and any
callback are written only when that change applied.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

from gateway.errors import ItemChanged
from gateway.records.review import OPEN, STATES, SUMMARY_FIELDS, ReviewItem, ReviewSummary
from gateway.review.items import new_id
from gateway.store.base import Statement, Store

# columns a listing returns: never the texts, which may be large or private
SUMMARY_COLUMNS = ", ".join(SUMMARY_FIELDS)
JSON_COLUMNS = ("request", "response", "segments", "record", "edited")
FLAGS = ("stream", "overdue", "text_stored")
# what the audit trail snapshots before and after each change
SNAPSHOT_FIELDS = (
    "state",
    "outcome",
    "assignee",
    "priority",
    "overdue",
    "escalations",
    "version",
    "reason",
)
# every field of an item, and the token that ties an audit row to the change it records
INSERT_COLUMNS = (
    *(f.name for f in dataclasses.fields(ReviewItem) if f.name != "schema"),
    "op_token",
)


def snapshot(item: ReviewItem) -> dict[str, Any]:
    return {k: getattr(item, k) for k in SNAPSHOT_FIELDS}


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, ensure_ascii=False)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_COLUMNS:
        if name in row and isinstance(row[name], str):
            row[name] = json.loads(row[name])
    for name in FLAGS:
        if name in row and row[name] is not None:
            row[name] = bool(row[name])
    if isinstance(row.get("policies"), str):
        row["policies"] = tuple(p for p in row["policies"].split(",") if p)
    return row


def _item(row: dict[str, Any]) -> ReviewItem:
    return ReviewItem.from_json(_decode(row))


def _summary(row: dict[str, Any]) -> ReviewSummary:
    return ReviewSummary(**_decode(row))


INSERT_SQL = (
    f"INSERT INTO review_items ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"
)


def row_values(item: ReviewItem) -> tuple[Any, ...]:
    """An item as the row ``INSERT_SQL`` writes."""
    row = item.to_json()
    # delimited, so a LIKE filter matches whole policy ids only
    row["policies"] = "," + ",".join(item.policies) + ","
    for name in JSON_COLUMNS:
        row[name] = _dump(row.get(name))
    for name in FLAGS:
        row[name] = int(bool(row[name]))
    return tuple(row.get(c) for c in INSERT_COLUMNS)


class ReviewStore:
    def __init__(self, store: Store):
        self.store = store

    # -- writing ------------------------------------------------------------
    async def insert(self, item: ReviewItem, actor: str = "gateway") -> None:
        """Store a held item and its first audit row in one durable commit."""
        await self.store.transaction(
            [
                (INSERT_SQL, row_values(item)),
                self._audit_sql(
                    item.id,
                    item.created_at,
                    actor,
                    "held",
                    None,
                    snapshot(item),
                    {
                        "policy": item.policy,
                        "severity": item.severity,
                        "route": item.route,
                        "decision_id": item.decision_id,
                    },
                ),
            ]
        )

    def _audit_sql(
        self,
        item_id: str,
        ts: float,
        actor: str,
        action: str,
        before: dict | None,
        after: dict | None,
        detail: Any,
        guard_token: str | None = None,
    ) -> Statement:
        cols = "id, item_id, ts, actor, action, before_state, after_state, detail"
        values = (new_id(), item_id, ts, actor, action, _dump(before), _dump(after), _dump(detail))
        if guard_token is None:
            return (f"INSERT INTO review_audit ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
        return (
            f"INSERT INTO review_audit ({cols}) SELECT ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM review_items WHERE id = ? AND op_token = ?)",
            values + (item_id, guard_token),
        )

    async def change(
        self,
        item: ReviewItem,
        *,
        actor: str,
        action: str,
        changes: dict[str, Any],
        detail: Any = None,
        require_state: str | None = OPEN,
        callback: dict[str, Any] | None = None,
    ) -> ReviewItem:
        """Apply ``changes`` if ``item`` is still at the version read; raise ``ItemChanged`` if not.

        ``changes`` values may be ``("+", n)`` to add ``n`` to an integer column.
        """
        now = time.time()
        token = new_id()
        sets, params = [], []
        after: dict[str, Any] = {}
        for name, value in changes.items():
            if isinstance(value, tuple) and value and value[0] == "+":
                sets.append(f"{name} = {name} + ?")
                params.append(value[1])
                after[name] = (getattr(item, name) or 0) + value[1]
                continue
            sets.append(f"{name} = ?")
            if name in JSON_COLUMNS:
                params.append(_dump(value))
            elif isinstance(value, bool):
                params.append(int(value))
            else:
                params.append(value)
            after[name] = value
        sets += ["version = version + 1", "updated_at = ?", "op_token = ?"]
        params += [now, token]
        where = "id = ? AND version = ?"
        params += [item.id, item.version]
        if require_state is not None:
            where += " AND state = ?"
            params.append(require_state)
        changed = item.replace(**after, version=item.version + 1, updated_at=now)
        statements: list[Statement] = [
            (f"UPDATE review_items SET {', '.join(sets)} WHERE {where}", tuple(params)),
            self._audit_sql(
                item.id,
                now,
                actor,
                action,
                snapshot(item),
                snapshot(changed),
                detail,
                guard_token=token,
            ),
        ]
        if callback is not None:
            statements.append(
                (
                    "INSERT INTO review_callbacks (id, item_id, route, url, payload, state, "
                    "attempts, next_at, last_error, created_at) "
                    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM review_items WHERE id = ? AND op_token = ?)",
                    (
                        new_id(),
                        item.id,
                        item.route,
                        callback["url"],
                        _dump(callback["payload"]),
                        "due",
                        0,
                        now,
                        None,
                        now,
                        item.id,
                        token,
                    ),
                )
            )
        counts = await self.store.transaction(statements)
        if counts[0] != 1:
            raise ItemChanged(await self.get(item.id))
        return changed

    async def comment(self, item_id: str, author: str, body: str) -> dict[str, Any]:
        now = time.time()
        comment = {"id": new_id(), "item_id": item_id, "ts": now, "author": author, "body": body}
        await self.store.transaction(
            [
                (
                    "INSERT INTO review_comments (id, item_id, ts, author, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (comment["id"], item_id, now, author, body),
                ),
                self._audit_sql(
                    item_id,
                    now,
                    author,
                    "comment",
                    None,
                    None,
                    {"comment_id": comment["id"], "chars": len(body)},
                ),
            ]
        )
        return comment

    async def audit_only(self, item_id: str, actor: str, action: str, detail: Any) -> None:
        await self.store.transaction(
            [self._audit_sql(item_id, time.time(), actor, action, None, None, detail)]
        )

    # -- reading --------------------------------------------------------------
    async def get(self, item_id: str) -> ReviewItem | None:
        row = await self.store.fetchone("SELECT * FROM review_items WHERE id = ?", item_id)
        if row is None:
            return None
        row.pop("op_token", None)
        return _item(row)

    def _filters(self, f: dict[str, Any], now: float) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if f.get("state"):
            clauses.append("state = ?")
            params.append(f["state"])
        if f.get("policy"):
            clauses.append("policies LIKE ?")
            params.append(f"%,{f['policy']},%")
        if f.get("severity"):
            clauses.append("severity = ?")
            params.append(f["severity"])
        if f.get("route"):
            clauses.append("route = ?")
            params.append(f["route"])
        if f.get("assignee") == "none":
            clauses.append("assignee IS NULL")
        elif f.get("assignee"):
            clauses.append("assignee = ?")
            params.append(f["assignee"])
        if f.get("overdue") is True:
            clauses.append("state = 'pending' AND sla_deadline < ?")
            params.append(now)
        elif f.get("overdue") is False:
            clauses.append("NOT (state = 'pending' AND sla_deadline < ?)")
            params.append(now)
        if f.get("tenant"):
            clauses.append("tenant = ?")
            params.append(f["tenant"])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return where, params

    async def list_items(
        self, filters: dict[str, Any], *, limit: int = 100, offset: int = 0, sort: str = "sla"
    ) -> tuple[list[ReviewSummary], int]:
        now = time.time()
        where, params = self._filters(filters, now)
        order = {
            "sla": "sla_deadline ASC, severity_rank DESC, created_at ASC",
            "priority": "priority DESC, sla_deadline ASC, created_at ASC",
            "newest": "created_at DESC",
        }.get(sort, "sla_deadline ASC, severity_rank DESC, created_at ASC")
        rows = await self.store.fetchall(
            f"SELECT {SUMMARY_COLUMNS} FROM review_items {where} ORDER BY {order}, id "
            "LIMIT ? OFFSET ?",
            *params,
            limit,
            offset,
        )
        total = await self.store.fetchone(
            f"SELECT COUNT(*) AS n FROM review_items {where}", *params
        )
        return [_summary(r) for r in rows], int(total["n"]) if total else 0

    async def counts(self) -> dict[str, Any]:
        now = time.time()
        rows = await self.store.fetchall(
            "SELECT state, severity, COUNT(*) AS n FROM review_items GROUP BY state, severity"
        )
        overdue = await self.store.fetchone(
            "SELECT COUNT(*) AS n FROM review_items WHERE state = 'pending' AND sla_deadline < ?",
            now,
        )
        by_state: dict[str, int] = dict.fromkeys(STATES, 0)
        by_severity: dict[str, dict[str, int]] = {}
        for r in rows:
            by_state[r["state"]] = by_state.get(r["state"], 0) + int(r["n"])
            by_severity.setdefault(r["state"], {})[r["severity"]] = int(r["n"])
        return {
            "by_state": by_state,
            "by_state_severity": by_severity,
            "overdue": int(overdue["n"]) if overdue else 0,
        }

    async def approval_rates(self) -> dict[str, dict[str, Any]]:
        """Per policy: decided items and the share approved (its measured false-positive rate)."""
        rows = await self.store.fetchall(
            "SELECT policy, outcome, COUNT(*) AS n FROM review_items "
            "WHERE outcome IS NOT NULL AND decided_by IS NOT NULL AND decided_by <> 'system' "
            "GROUP BY policy, outcome"
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(r["policy"], {"approved": 0, "rejected": 0})
            entry[r["outcome"]] = entry.get(r["outcome"], 0) + int(r["n"])
        for entry in out.values():
            decided = entry["approved"] + entry["rejected"]
            entry["decided"] = decided
            entry["approval_rate"] = round(entry["approved"] / decided, 4) if decided else None
        return out

    async def audit(self, item_id: str) -> list[dict[str, Any]]:
        rows = await self.store.fetchall(
            "SELECT * FROM review_audit WHERE item_id = ? ORDER BY ts, id", item_id
        )
        for r in rows:
            for name in ("before_state", "after_state", "detail"):
                if isinstance(r.get(name), str):
                    r[name] = json.loads(r[name])
        return rows

    async def comments(self, item_id: str) -> list[dict[str, Any]]:
        return await self.store.fetchall(
            "SELECT * FROM review_comments WHERE item_id = ? ORDER BY ts, id", item_id
        )

    # -- background work --------------------------------------------------------
    async def newly_overdue(self, now: float, limit: int = 500) -> list[str]:
        """Ids of open items past their SLA not yet marked overdue."""
        rows = await self.store.fetchall(
            "SELECT id FROM review_items WHERE state = 'pending' AND overdue = 0 "
            "AND sla_deadline < ? ORDER BY sla_deadline LIMIT ?",
            now,
            limit,
        )
        return [r["id"] for r in rows]

    async def newly_expired(self, now: float, limit: int = 500) -> list[ReviewItem]:
        rows = await self.store.fetchall(
            "SELECT id FROM review_items WHERE state = 'pending' AND expires_at < ? "
            "ORDER BY expires_at LIMIT ?",
            now,
            limit,
        )
        items = [await self.get(r["id"]) for r in rows]
        return [i for i in items if i is not None]

    async def purge(self, now: float) -> int:
        """Delete decided items past their retention, with their comments and callbacks.

        The audit trail stays: it holds states and hashes, never the texts.
        """
        rows = await self.store.fetchall(
            "SELECT id FROM review_items WHERE retain_until < ? AND state <> 'pending'", now
        )
        if not rows:
            return 0
        statements: list[Statement] = []
        for r in rows:
            statements += [
                ("DELETE FROM review_comments WHERE item_id = ?", (r["id"],)),
                ("DELETE FROM review_callbacks WHERE item_id = ?", (r["id"],)),
                ("DELETE FROM review_items WHERE id = ?", (r["id"],)),
                self._audit_sql(
                    r["id"], now, "system", "purged", None, None, {"reason": "retention"}
                ),
            ]
        await self.store.transaction(statements)
        return len(rows)

    async def due_callbacks(
        self, now: float, limit: int = 50, *, lease: float = 60.0
    ) -> tuple[str, list[dict[str, Any]]]:
        """Claim due callbacks for ``lease`` seconds; the token marks the claim as ours.

        Every process sharing the store runs a sender: a row another one
        holds is left alone until its lease runs out (its holder died). So
        claim no more rows than can all be sent within ``lease``.
        """
        token = secrets.token_hex(8)
        clock = time.time()
        # PostgreSQL skips rows another sender is claiming instead of waiting on them;
        # SQLite runs one writer at a time, so the UPDATE is atomic as it stands
        lock = " FOR UPDATE SKIP LOCKED" if self.store.dialect == "postgresql" else ""
        rows = await self.store.fetchall(
            "UPDATE review_callbacks SET claimed_until = ?, claimed_by = ? WHERE id IN "
            "(SELECT id FROM review_callbacks WHERE state = 'due' AND next_at <= ? "
            f"AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY next_at LIMIT ?{lock}) "
            "RETURNING *",
            clock + lease,
            token,
            now,
            clock,
            limit,
        )
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return token, sorted(rows, key=lambda r: r["next_at"])

    async def callback_done(
        self,
        cb_id: str,
        *,
        token: str,
        ok: bool,
        attempts: int,
        next_at: float,
        error: str | None,
        give_up: bool,
    ) -> None:
        state = "sent" if ok else ("failed" if give_up else "due")
        # a failure is recorded only while the lease is ours; a success always is
        guard = "" if ok else " AND claimed_by = ?"
        await self.store.execute(
            "UPDATE review_callbacks SET state = ?, attempts = ?, next_at = ?, last_error = ?, "
            f"claimed_until = NULL, claimed_by = NULL WHERE id = ?{guard}",
            state,
            attempts,
            next_at,
            error,
            cb_id,
            *(() if ok else (token,)),
        )

    async def callbacks_for(self, item_id: str) -> list[dict[str, Any]]:
        return await self.store.fetchall(
            "SELECT id, url, state, attempts, last_error FROM review_callbacks WHERE item_id = ? "
            "ORDER BY created_at",
            item_id,
        )
