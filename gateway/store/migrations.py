"""Versioned schema migrations, run at start by every store backend.

SQL here must run on both SQLite and PostgreSQL: text ids, JSON kept as
TEXT, ``DOUBLE PRECISION`` for timestamps (Unix seconds). Append new
migrations; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "decision records",
        [
            """CREATE TABLE decisions (
                id TEXT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                route TEXT NOT NULL,
                model TEXT,
                action TEXT NOT NULL,
                revision TEXT,
                record TEXT NOT NULL
            )""",
            "CREATE INDEX decisions_ts ON decisions (ts)",
            "CREATE INDEX decisions_route_action ON decisions (route, action)",
        ],
    ),
]
