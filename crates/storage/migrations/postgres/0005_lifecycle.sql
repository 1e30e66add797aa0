-- Storage lifecycle (GC change log, tombstones, upload pins, quota usage, policies, pull
-- times, GC runs): the PostgreSQL twin of SQLite's migration `lifecycle-1`
-- (crates/storage/src/sqlite_lifecycle.rs). Row triggers keep the change log and the quota
-- usage in the same transaction as every write to tags, manifests, manifest_blobs,
-- manifest_children, blob_links and upload_pins, including the rows ON DELETE CASCADE
-- removes. See crates/storage/src/postgres_lifecycle.rs for the locking.

-- The change log: what may have become garbage ('m' manifest, 'b' blob), since when.
CREATE TABLE gc_candidates (
    kind        TEXT NOT NULL,
    repository  TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    since       BIGINT NOT NULL,
    PRIMARY KEY (kind, repository, digest)
);
CREATE INDEX gc_candidates_by_since ON gc_candidates(kind, since, repository, digest);

-- Blobs chosen by the collector whose bytes are being deleted.
CREATE TABLE blob_tombstones (
    digest      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    at          BIGINT NOT NULL
);

-- Digests an upload is committing right now.
CREATE TABLE upload_pins (
    upload      TEXT NOT NULL PRIMARY KEY,
    digest      TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX upload_pins_by_digest ON upload_pins(digest);

-- Quota usage: distinct blobs referenced per project, and the project's total bytes.
CREATE TABLE project_blobs (
    project     TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL,
    refs        BIGINT NOT NULL,
    PRIMARY KEY (project, digest)
);
CREATE TABLE project_usage (
    project     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    bytes       BIGINT NOT NULL
);

CREATE TABLE project_policies (
    project           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    quota_bytes       BIGINT,
    max_repositories  BIGINT,
    immutable_tags    TEXT NOT NULL,
    retention         TEXT,
    updated_at        BIGINT NOT NULL
);

-- Last pull of each manifest (written in batches, never per pull).
CREATE TABLE manifest_pulls (
    repository  TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    pulled_at   BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);

CREATE TABLE gc_runs (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind               TEXT NOT NULL,
    started_by         TEXT NOT NULL,
    dry_run            BOOLEAN NOT NULL,
    started_at         BIGINT NOT NULL,
    finished_at        BIGINT NOT NULL,
    manifests_removed  BIGINT NOT NULL,
    tags_removed       BIGINT NOT NULL,
    blobs_removed      BIGINT NOT NULL,
    bytes_freed        BIGINT NOT NULL,
    errors             TEXT NOT NULL,
    detail             TEXT NOT NULL
);

-- Record (or refresh) a candidate. clock_timestamp(), not now(): a transaction that
-- waited for a lock logs the time of its change, so the grace period is not shortened.
CREATE FUNCTION berth_gc_touch(k TEXT, repo TEXT, d TEXT) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO gc_candidates (kind, repository, digest, since)
    VALUES (k, repo, d, floor(extract(epoch FROM clock_timestamp()))::BIGINT)
    ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
$$;

CREATE FUNCTION berth_lc_tag_changed() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM berth_gc_touch('m', OLD.repository, OLD.digest);
    ELSIF OLD.digest <> NEW.digest THEN
        PERFORM berth_gc_touch('m', OLD.repository, OLD.digest);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER lc_tag_changed AFTER UPDATE OF digest OR DELETE ON tags
    FOR EACH ROW EXECUTE FUNCTION berth_lc_tag_changed();

CREATE FUNCTION berth_lc_manifest_added() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM berth_gc_touch('m', NEW.repository, NEW.digest);
    INSERT INTO project_usage AS u (project, bytes)
        VALUES (split_part(NEW.repository, '/', 1), NEW.size)
        ON CONFLICT (project) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    RETURN NULL;
END $$;
CREATE TRIGGER lc_manifest_added AFTER INSERT ON manifests
    FOR EACH ROW EXECUTE FUNCTION berth_lc_manifest_added();

CREATE FUNCTION berth_lc_manifest_deleted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    UPDATE project_usage SET bytes = bytes - OLD.size
        WHERE project = split_part(OLD.repository, '/', 1);
    PERFORM berth_gc_touch('m', m.repository, m.digest)
        FROM manifests m WHERE m.repository = OLD.repository AND m.subject = OLD.digest;
    IF OLD.subject IS NOT NULL THEN
        PERFORM berth_gc_touch('m', OLD.repository, OLD.subject);
    END IF;
    DELETE FROM manifest_pulls WHERE repository = OLD.repository AND digest = OLD.digest;
    RETURN NULL;
END $$;
CREATE TRIGGER lc_manifest_deleted AFTER DELETE ON manifests
    FOR EACH ROW EXECUTE FUNCTION berth_lc_manifest_deleted();

CREATE FUNCTION berth_lc_child_removed() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM berth_gc_touch('m', OLD.repository, OLD.child);
    RETURN NULL;
END $$;
CREATE TRIGGER lc_child_removed AFTER DELETE ON manifest_children
    FOR EACH ROW EXECUTE FUNCTION berth_lc_child_removed();

-- A project counts a blob once however many manifests reference it: `project_blobs` holds
-- the reference count, and the usage changes only when the count leaves or reaches zero.
-- `xmax = 0` tells a fresh insert from the ON CONFLICT update, which waits for a
-- concurrent transaction inserting the same row, so two pushes never both count a blob.
CREATE FUNCTION berth_lc_reference_added() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    p TEXT := split_part(NEW.repository, '/', 1);
    sz BIGINT;
    fresh BOOLEAN;
BEGIN
    SELECT size INTO sz FROM blob_links WHERE digest = NEW.blob LIMIT 1;
    sz := COALESCE(sz, 0);
    INSERT INTO project_blobs AS pb (project, digest, size, refs) VALUES (p, NEW.blob, sz, 1)
        ON CONFLICT (project, digest) DO UPDATE SET refs = pb.refs + 1
        RETURNING (pb.xmax = 0) INTO fresh;
    IF fresh THEN
        INSERT INTO project_usage AS u (project, bytes) VALUES (p, sz)
            ON CONFLICT (project) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER lc_reference_added AFTER INSERT ON manifest_blobs
    FOR EACH ROW EXECUTE FUNCTION berth_lc_reference_added();

CREATE FUNCTION berth_lc_reference_removed() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    p TEXT := split_part(OLD.repository, '/', 1);
    left_refs BIGINT;
    sz BIGINT;
BEGIN
    UPDATE project_blobs SET refs = refs - 1 WHERE project = p AND digest = OLD.blob
        RETURNING refs, size INTO left_refs, sz;
    IF FOUND AND left_refs <= 0 THEN
        DELETE FROM project_blobs WHERE project = p AND digest = OLD.blob;
        UPDATE project_usage SET bytes = bytes - sz WHERE project = p;
    END IF;
    PERFORM berth_gc_touch('b', '', OLD.blob);
    RETURN NULL;
END $$;
CREATE TRIGGER lc_reference_removed AFTER DELETE ON manifest_blobs
    FOR EACH ROW EXECUTE FUNCTION berth_lc_reference_removed();

CREATE FUNCTION berth_lc_link_changed() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM berth_gc_touch('b', '', NEW.digest);
    ELSE
        PERFORM berth_gc_touch('b', '', OLD.digest);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER lc_link_changed AFTER INSERT OR DELETE ON blob_links
    FOR EACH ROW EXECUTE FUNCTION berth_lc_link_changed();

CREATE FUNCTION berth_lc_pin_removed() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM berth_gc_touch('b', '', OLD.digest);
    RETURN NULL;
END $$;
CREATE TRIGGER lc_pin_removed AFTER DELETE ON upload_pins
    FOR EACH ROW EXECUTE FUNCTION berth_lc_pin_removed();

CREATE FUNCTION berth_lc_upload_removed() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM upload_pins WHERE upload = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER lc_upload_removed AFTER DELETE ON uploads
    FOR EACH ROW EXECUTE FUNCTION berth_lc_upload_removed();

-- Backfill a database that had data before this migration (no-op on a fresh one).
INSERT INTO project_blobs (project, digest, size, refs)
    SELECT split_part(mb.repository, '/', 1), mb.blob,
           COALESCE((SELECT size FROM blob_links b WHERE b.digest = mb.blob LIMIT 1), 0),
           COUNT(*)
    FROM manifest_blobs mb GROUP BY 1, 2;
INSERT INTO project_usage (project, bytes)
    SELECT project, SUM(bytes)::BIGINT FROM (
        SELECT project, size AS bytes FROM project_blobs
        UNION ALL
        SELECT split_part(repository, '/', 1) AS project, size AS bytes FROM manifests) AS u
    GROUP BY project;
INSERT INTO gc_candidates (kind, repository, digest, since)
    SELECT 'm', m.repository, m.digest, floor(extract(epoch FROM clock_timestamp()))::BIGINT
    FROM manifests m
    WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository AND t.digest = m.digest);
INSERT INTO gc_candidates (kind, repository, digest, since)
    SELECT 'b', '', b.digest, floor(extract(epoch FROM clock_timestamp()))::BIGINT FROM blob_links b
    WHERE NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
    GROUP BY b.digest;
