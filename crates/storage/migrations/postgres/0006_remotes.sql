-- Registries as objects: the same tables as crates/storage/src/sqlite_remotes.rs.

CREATE TABLE remote_registries (
    name          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    url           TEXT NOT NULL,
    username      TEXT NOT NULL,
    secret_sealed BYTEA NOT NULL,
    ca_pem        TEXT NOT NULL,
    insecure      BOOLEAN NOT NULL,
    description   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE registry_health (
    name       TEXT COLLATE "C" NOT NULL PRIMARY KEY
               REFERENCES remote_registries(name) ON DELETE CASCADE,
    checked_at BIGINT NOT NULL,
    ok         BOOLEAN NOT NULL,
    message    TEXT NOT NULL
);

CREATE TABLE project_proxies (
    project  TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES projects(name) ON DELETE CASCADE,
    registry TEXT COLLATE "C" NOT NULL REFERENCES remote_registries(name) ON DELETE RESTRICT
);
CREATE INDEX project_proxies_by_registry ON project_proxies(registry);
