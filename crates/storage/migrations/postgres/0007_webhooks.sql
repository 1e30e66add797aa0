-- Webhook endpoints per project and their delivery log (issue 11).
CREATE TABLE IF NOT EXISTS webhooks (
    id            BIGSERIAL PRIMARY KEY,
    project       TEXT COLLATE "C" NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name          TEXT COLLATE "C" NOT NULL,
    url           TEXT    NOT NULL,
    events        TEXT    NOT NULL,
    format        TEXT    NOT NULL,
    auth          TEXT    NOT NULL,
    secret_sealed BYTEA   NOT NULL,
    ca_pem        TEXT    NOT NULL,
    insecure      BOOLEAN NOT NULL,
    enabled       BOOLEAN NOT NULL,
    created_at    BIGINT  NOT NULL,
    UNIQUE (project, name)
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id          BIGSERIAL PRIMARY KEY,
    webhook_id  BIGINT  NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    at          BIGINT  NOT NULL,
    event       TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    latency_ms  BIGINT  NOT NULL,
    error       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_hook ON webhook_deliveries(webhook_id, id);
