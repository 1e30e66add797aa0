-- What replicas share besides metadata and accounts.

-- Cluster-wide secrets and settings, e.g. the token signing key (`token_signing_key`):
-- created once by the first replica to start (INSERT … ON CONFLICT DO NOTHING), read by
-- every other one, so a token issued by one replica verifies on all.
CREATE TABLE cluster_settings (
    name        TEXT NOT NULL PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Failed-login counters shared by all replicas (keys are `account:<sha256>` or
-- `address:<ip>`), so N replicas do not allow N times the attempts.
CREATE TABLE login_failures (
    key           TEXT NOT NULL PRIMARY KEY,
    failures      INTEGER NOT NULL,
    last_failure  BIGINT NOT NULL,   -- milliseconds since the epoch
    blocked_until BIGINT             -- milliseconds since the epoch
);
CREATE INDEX login_failures_by_last ON login_failures(last_failure);
