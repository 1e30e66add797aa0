//! [`crate::ReplicationStore`] in the SQLite database of [`SqliteMetadata`]: the tables
//! ([`SCHEMA`], created at open, idempotent) and the shared implementation
//! ([`crate::replication::impl_replication_store`]).

use crate::sqlite::SqliteMetadata;

/// Replication rules, executions and tasks. A rule names its remote registry by a foreign
/// key (`ON DELETE RESTRICT`: a registry a rule uses cannot be deleted).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS replication_rules (
    name                TEXT NOT NULL PRIMARY KEY,
    direction           TEXT NOT NULL,
    registry            TEXT NOT NULL REFERENCES remote_registries(name) ON DELETE RESTRICT,
    repositories        TEXT NOT NULL,
    tags                TEXT NOT NULL,
    mapping             TEXT NOT NULL,
    trigger_spec        TEXT NOT NULL,
    replicate_deletions INTEGER NOT NULL,
    enabled             INTEGER NOT NULL,
    description         TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    last_slot           INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS replication_executions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    rule            TEXT NOT NULL REFERENCES replication_rules(name),
    trigger_kind    TEXT NOT NULL,
    status          TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    message         TEXT NOT NULL,
    stop_requested  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS replication_executions_by_rule ON replication_executions(rule, id);
CREATE TABLE IF NOT EXISTS replication_tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    execution   INTEGER NOT NULL REFERENCES replication_executions(id),
    operation   TEXT NOT NULL,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    reference   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    status      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    error       TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER
);
CREATE INDEX IF NOT EXISTS replication_tasks_by_execution ON replication_tasks(execution, id);
"#;

crate::replication::impl_replication_store!(SqliteMetadata, sqlx::Sqlite, writer, reader);

/// Columns added after [`SCHEMA`] first shipped (idempotent; call after it).
pub(crate) async fn migrate(pool: &sqlx::SqlitePool) -> crate::StorageResult<()> {
    // `heartbeat_at`: the runner's liveness, so executions of a dead process are failed.
    let has_heartbeat: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('replication_executions') WHERE name = 'heartbeat_at'",
    )
    .fetch_one(pool)
    .await?;
    if has_heartbeat == 0 {
        sqlx::raw_sql(
            "ALTER TABLE replication_executions ADD COLUMN heartbeat_at INTEGER NOT NULL DEFAULT 0",
        )
        .execute(pool)
        .await?;
    }
    // `labels`: a rule's labels filter.
    let has_labels: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('replication_rules') WHERE name = 'labels'",
    )
    .fetch_one(pool)
    .await?;
    if has_labels == 0 {
        sqlx::raw_sql("ALTER TABLE replication_rules ADD COLUMN labels TEXT NOT NULL DEFAULT ''")
            .execute(pool)
            .await?;
    }
    Ok(())
}
