-- Access control: the same tables as crates/storage/src/sqlite_accounts.rs.

CREATE TABLE projects (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    public      BOOLEAN NOT NULL,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    name          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin         BOOLEAN NOT NULL,
    disabled      BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE members (
    project   TEXT COLLATE "C" NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    username  TEXT COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('admin', 'maintainer', 'developer', 'guest')),
    PRIMARY KEY (project, username)
);
CREATE INDEX members_by_user ON members(username, project);

CREATE TABLE robots (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    project     TEXT COLLATE "C" NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    can_push    BOOLEAN NOT NULL,
    expires_at  BIGINT,
    revoked     BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    description TEXT NOT NULL
);
CREATE INDEX robots_by_project ON robots(project, name);

CREATE TABLE refresh_tokens (
    id_hash     TEXT NOT NULL PRIMARY KEY,
    subject     TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_by_subject ON refresh_tokens(subject);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens(expires_at);

CREATE TABLE console_sessions (
    id_hash     TEXT NOT NULL PRIMARY KEY,
    username    TEXT COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_user ON console_sessions(username);
CREATE INDEX console_sessions_by_expiry ON console_sessions(expires_at);

-- An identity column: increasing, never reused (a rolled-back insert skips a value).
CREATE TABLE audit_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT COLLATE "C" NOT NULL,
    client_addr TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_events_by_at ON audit_events(at, id);
CREATE INDEX audit_events_by_actor ON audit_events(actor, id);
CREATE INDEX audit_events_by_action ON audit_events(action, id);
