-- Registry metadata: the same tables as the SQLite schema (crates/storage/src/sqlite.rs).
-- Names, tags and digests use the "C" collation: byte-wise order, as the OCI listings
-- and SQLite's BINARY collation have it.

CREATE TABLE repositories (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE blob_links (
    repository  TEXT COLLATE "C" NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest      TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX blob_links_by_digest ON blob_links(digest);

CREATE TABLE manifests (
    repository    TEXT COLLATE "C" NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest        TEXT COLLATE "C" NOT NULL,
    media_type    TEXT NOT NULL,
    content       BYTEA NOT NULL,
    size          BIGINT NOT NULL,
    subject       TEXT COLLATE "C",
    artifact_type TEXT,
    annotations   TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX manifests_by_subject ON manifests(repository, subject);

CREATE TABLE manifest_blobs (
    repository  TEXT COLLATE "C" NOT NULL,
    manifest    TEXT COLLATE "C" NOT NULL,
    blob        TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (repository, manifest, blob),
    FOREIGN KEY (repository, manifest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs(blob);

CREATE TABLE manifest_children (
    repository  TEXT COLLATE "C" NOT NULL,
    manifest    TEXT COLLATE "C" NOT NULL,
    child       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (repository, manifest, child),
    FOREIGN KEY (repository, manifest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_children_by_child ON manifest_children(repository, child);

CREATE TABLE tags (
    repository  TEXT COLLATE "C" NOT NULL,
    tag         TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repository, tag),
    FOREIGN KEY (repository, digest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_digest ON tags(repository, digest);

CREATE TABLE uploads (
    id          TEXT NOT NULL PRIMARY KEY,
    repository  TEXT COLLATE "C" NOT NULL,
    started_at  BIGINT NOT NULL
);
