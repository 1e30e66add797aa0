-- The runner's liveness: a replica running an execution updates `heartbeat_at` every few
-- seconds; any replica fails running executions whose heartbeat is too old (their replica
-- died). Twin of the SQLite column added by crates/storage/src/sqlite_replication.rs.
ALTER TABLE replication_executions ADD COLUMN heartbeat_at BIGINT NOT NULL DEFAULT 0;
