-- Every DLQ mutation, newest read first. row_key makes a retried batch
-- idempotent: a write whose answer was lost is not stored twice.
CREATE TABLE IF NOT EXISTS dlq_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    row_key     TEXT    NOT NULL UNIQUE,
    at_ms       INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    filter      TEXT,
    counts      TEXT    NOT NULL,
    archive_key TEXT,
    task_id     TEXT
);
CREATE INDEX IF NOT EXISTS dlq_audit_at ON dlq_audit (at_ms);
CREATE INDEX IF NOT EXISTS dlq_audit_queue_at ON dlq_audit (queue, at_ms);
-- Background move tasks: one row each, its last known view as JSON. A row
-- still 'running' when a daemon starts was interrupted by a stop or a kill.
CREATE TABLE IF NOT EXISTS dlq_tasks (
    task_id       TEXT    PRIMARY KEY,
    queue         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    started_at_ms INTEGER NOT NULL,
    body          TEXT    NOT NULL
);
