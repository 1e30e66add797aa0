-- Who opened each upload session (`user:NAME`, `robot:NAME`, `addr:IP`), for the
-- per-principal limit on open sessions (the SQLite schema's `uploads.owner`); empty for
-- sessions opened before this migration.
ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX uploads_by_owner ON uploads(owner);
