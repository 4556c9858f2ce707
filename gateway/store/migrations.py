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

MIGRATIONS.append(
    (
        10,
        "review queue",
        [
            """CREATE TABLE review_items (
                id TEXT PRIMARY KEY,
                decision_id TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                state TEXT NOT NULL,
                outcome TEXT,
                route TEXT NOT NULL,
                protocol TEXT NOT NULL,
                path TEXT NOT NULL,
                model TEXT,
                stream INTEGER NOT NULL,
                policy TEXT NOT NULL,
                policies TEXT NOT NULL,
                severity TEXT NOT NULL,
                severity_rank INTEGER NOT NULL,
                priority INTEGER NOT NULL,
                sla_deadline DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                expire_action TEXT NOT NULL,
                retain_until DOUBLE PRECISION NOT NULL,
                overdue INTEGER NOT NULL,
                escalations INTEGER NOT NULL,
                assignee TEXT,
                key_id TEXT,
                tenant TEXT,
                text_stored INTEGER NOT NULL,
                text_hash TEXT NOT NULL,
                request TEXT,
                response TEXT,
                segments TEXT,
                record TEXT NOT NULL,
                edited TEXT,
                reason TEXT,
                decided_by TEXT,
                decided_at DOUBLE PRECISION,
                version INTEGER NOT NULL,
                op_token TEXT
            )""",
            "CREATE INDEX review_items_queue ON review_items (state, sla_deadline)",
            "CREATE INDEX review_items_policy ON review_items (policy, state)",
            "CREATE INDEX review_items_route ON review_items (route, state)",
            "CREATE INDEX review_items_assignee ON review_items (assignee, state)",
            "CREATE INDEX review_items_retain ON review_items (retain_until)",
            """CREATE TABLE review_audit (
                id TEXT PRIMARY KEY,
                item_id TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                before_state TEXT,
                after_state TEXT,
                detail TEXT
            )""",
            "CREATE INDEX review_audit_item ON review_audit (item_id, ts)",
            """CREATE TABLE review_comments (
                id TEXT PRIMARY KEY,
                item_id TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                author TEXT NOT NULL,
                body TEXT NOT NULL
            )""",
            "CREATE INDEX review_comments_item ON review_comments (item_id, ts)",
            """CREATE TABLE review_callbacks (
                id TEXT PRIMARY KEY,
                item_id TEXT NOT NULL,
                route TEXT NOT NULL,
                url TEXT NOT NULL,
                payload TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                next_at DOUBLE PRECISION NOT NULL,
                last_error TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX review_callbacks_due ON review_callbacks (state, next_at)",
        ],
    )
)


MIGRATIONS.append(
    (
        20,
        "incidents, their timelines, the sink outbox and route containment",
        [
            """CREATE TABLE incidents (
                id TEXT PRIMARY KEY,
                dedup_key TEXT NOT NULL,
                title TEXT NOT NULL,
                severity TEXT NOT NULL,
                state TEXT NOT NULL,
                source TEXT NOT NULL,
                rule_id TEXT,
                route TEXT,
                upstream TEXT,
                policy TEXT,
                opened_at DOUBLE PRECISION NOT NULL,
                first_seen DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL,
                resolved_at DOUBLE PRECISION,
                breach_count INTEGER NOT NULL DEFAULT 0,
                data TEXT NOT NULL
            )""",
            "CREATE INDEX incidents_state ON incidents (state, opened_at)",
            "CREATE INDEX incidents_dedup ON incidents (dedup_key, state)",
            """CREATE TABLE incident_events (
                incident_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                actor TEXT NOT NULL,
                message TEXT NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (incident_id, seq)
            )""",
            """CREATE TABLE incident_outbox (
                id TEXT PRIMARY KEY,
                incident_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                dedup_key TEXT NOT NULL,
                ord BIGINT NOT NULL,
                sink TEXT NOT NULL,
                event TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at DOUBLE PRECISION NOT NULL,
                last_error TEXT,
                dead INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX incident_outbox_due ON incident_outbox (dead, next_attempt_at)",
            """CREATE TABLE route_containment (
                route TEXT PRIMARY KEY,
                mode TEXT NOT NULL,
                incident_id TEXT,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                since DOUBLE PRECISION NOT NULL,
                auto_revert INTEGER NOT NULL DEFAULT 0
            )""",
        ],
    )
)

MIGRATIONS.append(
    (
        11,
        "review queue: covering indexes for counts and approval rates",
        [
            # the queue page counts by state and severity and reads approval rates
            # on every load; these keep both off the wide item rows
            "CREATE INDEX review_items_state_severity ON review_items (state, severity)",
            "CREATE INDEX review_items_outcomes ON review_items (policy, outcome, decided_by)",
        ],
    )
)


MIGRATIONS.append(
    (
        2,
        "key-value state (monitor windows)",
        [
            """CREATE TABLE kv_state (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ],
    )
)


MIGRATIONS.append(
    (
        12,
        "review queue previews",
        [
            # the first words of a held answer, secret-masked, for the queue ('' in privacy mode)
            "ALTER TABLE review_items ADD COLUMN preview TEXT NOT NULL DEFAULT ''",
        ],
    )
)


MIGRATIONS.append(
    (
        14,
        "shared queues and incident commands between gateway processes",
        [
            # signals every process hands to the one that applies them (the leader);
            # ids sort in arrival order (time first) and need no sequence, which the
            # two dialects spell differently
            """CREATE TABLE shared_queue (
                id TEXT PRIMARY KEY,
                topic TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                applied_at DOUBLE PRECISION
            )""",
            # what waits for the leader, in order; and applied items, kept a while
            # so that a hand-over sent again is recognised, not applied twice
            "CREATE INDEX shared_queue_waiting ON shared_queue (topic, id) "
            "WHERE applied_at IS NULL",
            "CREATE INDEX shared_queue_applied ON shared_queue (applied_at) "
            "WHERE applied_at IS NOT NULL",
            # a person's action on an incident taken by a process that is not the
            # leader: the leader applies it and writes the outcome here
            """CREATE TABLE incident_commands (
                id TEXT PRIMARY KEY,
                created_at DOUBLE PRECISION NOT NULL,
                done_at DOUBLE PRECISION,
                result TEXT
            )""",
            # review callbacks are claimed with a lease, like the incident outbox, so
            # processes sharing the store never make one attempt twice
            "ALTER TABLE review_callbacks ADD COLUMN claimed_until DOUBLE PRECISION",
            "ALTER TABLE review_callbacks ADD COLUMN claimed_by TEXT",
        ],
    )
)


MIGRATIONS.append(
    (
        21,
        "incident outbox: delivery leases, so processes sharing a store never send a row twice",
        [
            # set while one process delivers the row; another may take it once it has passed
            "ALTER TABLE incident_outbox ADD COLUMN claimed_until DOUBLE PRECISION",
            # who holds the lease: only its holder records how the delivery went
            "ALTER TABLE incident_outbox ADD COLUMN claimed_by TEXT",
            # the claim looks up each candidate's group for an older or leased row
            "CREATE INDEX incident_outbox_group ON incident_outbox (sink, dedup_key, ord)",
        ],
    )
)


MIGRATIONS.append(
    (
        15,
        "admin UI login sessions, shared by every gateway process",
        [
            # the session id is kept only as its SHA-256: reading the table gives no cookie
            # that logs anyone in; the roles are JSON text, checked against the tokens in force
            """CREATE TABLE ui_sessions (
                id_hash TEXT PRIMARY KEY,
                principal TEXT NOT NULL,
                roles TEXT NOT NULL,
                csrf TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at)",
        ],
    )
)


MIGRATIONS.append(
    (
        17,
        "route variants: the variant of each decision, and the weights in force",
        [
            # a canary's figures are read per variant over a window of decisions,
            # from every process and replica alike (gateway/canary)
            "ALTER TABLE decisions ADD COLUMN variant TEXT",
            "ALTER TABLE decisions ADD COLUMN breached INTEGER",
            "ALTER TABLE decisions ADD COLUMN total_ms DOUBLE PRECISION",
            "CREATE INDEX decisions_variant ON decisions (route, ts) WHERE variant IS NOT NULL",
            # weights set by a rollback or a promotion, over the configured ones;
            # a route without a row serves its configured weights
            """CREATE TABLE route_variants (
                route TEXT PRIMARY KEY,
                weights TEXT NOT NULL,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                incident_id TEXT,
                since DOUBLE PRECISION NOT NULL,
                registry TEXT
            )""",
        ],
    )
)


MIGRATIONS.append(
    (
        16,
        "outcome feedback: clicks, acceptances, repayments, labels and thumbs down",
        [
            # one row per event a client reported after an answer; the event id is the
            # client's idempotency key, so an event sent twice is stored and counted once
            """CREATE TABLE feedback_events (
                event_id TEXT PRIMARY KEY,
                decision_id TEXT NOT NULL,
                type TEXT NOT NULL,
                value INTEGER NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                received_by TEXT NOT NULL,
                decision_found INTEGER NOT NULL,
                route TEXT,
                cohort TEXT NOT NULL,
                policy TEXT,
                should_breach INTEGER,
                verdict TEXT
            )""",
            "CREATE INDEX feedback_events_decision ON feedback_events (decision_id)",
            # the weekly label report reads labels by time
            "CREATE INDEX feedback_events_type_at ON feedback_events (type, at)",
        ],
    )
)
