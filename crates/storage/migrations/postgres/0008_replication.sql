-- Replication rules, executions and per-artifact tasks (crates/storage/src/replication.rs);
-- the PostgreSQL twin of crates/storage/src/sqlite_replication.rs.
CREATE TABLE replication_rules (
    name                TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    direction           TEXT NOT NULL,
    registry            TEXT NOT NULL REFERENCES remote_registries(name) ON DELETE RESTRICT,
    repositories        TEXT NOT NULL,
    tags                TEXT NOT NULL,
    mapping             TEXT NOT NULL,
    trigger_spec        TEXT NOT NULL,
    replicate_deletions BOOLEAN NOT NULL,
    enabled             BOOLEAN NOT NULL,
    description         TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    last_slot           BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE replication_executions (
    id              BIGSERIAL PRIMARY KEY,
    rule            TEXT COLLATE "C" NOT NULL REFERENCES replication_rules(name),
    trigger_kind    TEXT NOT NULL,
    status          TEXT NOT NULL,
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    message         TEXT NOT NULL,
    stop_requested  BOOLEAN NOT NULL
);
CREATE INDEX replication_executions_by_rule ON replication_executions(rule, id);
CREATE TABLE replication_tasks (
    id          BIGSERIAL PRIMARY KEY,
    execution   BIGINT NOT NULL REFERENCES replication_executions(id),
    operation   TEXT NOT NULL,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    reference   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    status      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    error       TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT
);
CREATE INDEX replication_tasks_by_execution ON replication_tasks(execution, id);
