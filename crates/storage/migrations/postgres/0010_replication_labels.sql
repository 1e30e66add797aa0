-- A replication rule's labels filter (`key=value` or `key`, comma-separated; '' = none).
-- Twin of the SQLite column added by crates/storage/src/sqlite_replication.rs.
ALTER TABLE replication_rules ADD COLUMN labels TEXT NOT NULL DEFAULT '';
