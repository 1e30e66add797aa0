//! Storage lifecycle: online incremental garbage collection, quotas, retention policies,
//! immutable tags, pull-time recording and audit-log retention.
//!
//! Everything here works only through the storage traits ([`LifecycleStore`] for the
//! decisions, [`BlobStore::delete`] for the bytes), so it runs unchanged on any backend.
//!
//! A GC cycle ([`Lifecycle::run_gc`]):
//! 1. finishes tombstones an interrupted cycle left (delete bytes, clear tombstone);
//! 2. cancels upload sessions older than `limits.upload_ttl_hours`;
//! 3. walks the manifest change log: each candidate is decided in one transaction
//!    ([`LifecycleStore::collect_manifest`]); removing a manifest logs its blobs and
//!    children, which the same walk meets later (the log is read in `since` order);
//! 4. walks the blob change log: a blob unreferenced for `blob_grace_secs` is tombstoned
//!    in one transaction ([`LifecycleStore::tombstone_blob`]), its bytes deleted, then the
//!    tombstone cleared;
//! 5. prunes the audit log; records the run and writes an audit event.
//!
//! Its cost is the number of candidates (what changed), never the registry's size. The
//! argument why no push can lose a blob is in ARCHITECTURE.md ("Garbage collection").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use berth_proto::Digest;
use berth_storage::{
    BlobStore, BlobVerdict, CandidateKind, GcRun, LifecycleStore, ManifestVerdict, MetadataStore,
    ProjectPolicy, PushLimits, StorageError, StorageResult,
};
use serde::{Deserialize, Serialize};

use crate::config::LifecycleConfig;

/// Candidates read per page.
const PAGE: u32 = 500;
/// How long a commit waits for the collector to finish deleting a blob it is re-uploading.
const TOMBSTONE_WAIT: Duration = Duration::from_secs(30);
/// Most names listed in a run's detail.
const DETAIL_NAMES: usize = 50;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Manifest pulls gathered in memory (no database write per pull) and flushed in batches.
#[derive(Default)]
pub struct PullRecorder {
    pending: Mutex<HashMap<(String, Digest), i64>>,
}

impl PullRecorder {
    /// Note a pull of `digest` in `repository` (a map insert under a short lock).
    pub fn record(&self, repository: &str, digest: &Digest) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.insert((repository.to_owned(), digest.clone()), now());
    }

    /// Write what was gathered.
    pub async fn flush(&self, store: &dyn LifecycleStore) -> StorageResult<usize> {
        let batch: Vec<(String, Digest, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *pending)
                .into_iter()
                .map(|((r, d), at)| (r, d, at))
                .collect()
        };
        store.record_pulls(&batch).await?;
        Ok(batch.len())
    }
}

/// A project's retention policy (stored as JSON in [`ProjectPolicy::retention_json`]).
/// A tag is kept if any `keep_*` rule keeps it, or if it is immutable; the others are
/// removed (their manifests then go through GC). No `keep_*` rule: everything is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Repositories (name after `project/`, `*` wildcard) the policy applies to; empty: all.
    pub repositories: Vec<String>,
    /// Keep the N most recently pushed tags of each repository.
    pub keep_last: Option<u32>,
    /// Keep tags matching any of these patterns (`*` wildcard).
    pub keep_tags: Vec<String>,
    /// Keep tags pushed or pulled in the last D days.
    pub keep_days: Option<u32>,
    /// Delete untagged manifests pushed more than D days ago.
    pub untagged_days: Option<u32>,
}

impl RetentionPolicy {
    fn keeps_anything_by_rule(&self) -> bool {
        self.keep_last.is_some() || !self.keep_tags.is_empty() || self.keep_days.is_some()
    }
}

/// `*`-wildcard match (the only metacharacter), whole string.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// The project of a repository (its first path segment).
pub fn project_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

/// The first immutable pattern of `policy` matching `tag`.
pub fn immutable_rule<'a>(policy: &'a ProjectPolicy, tag: &str) -> Option<&'a str> {
    policy
        .immutable_tags
        .iter()
        .map(String::as_str)
        .find(|p| pattern_matches(p, tag))
}

/// Options of one GC run.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// `schedule`, `cli`, `api:<user>`, `console:<user>`.
    pub started_by: String,
}

/// The lifecycle service shared by the registry handlers, the scheduler, the API, the
/// console and the CLI.
pub struct Lifecycle {
    pub store: Arc<dyn LifecycleStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub pulls: PullRecorder,
    pub config: LifecycleConfig,
    /// Abandoned uploads are cancelled after this long.
    pub upload_ttl: Duration,
    /// One GC cycle at a time in this process (several processes are still safe: every
    /// decision is a transaction).
    running: tokio::sync::Mutex<()>,
}

impl Lifecycle {
    pub fn new(
        store: Arc<dyn LifecycleStore>,
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        config: LifecycleConfig,
        upload_ttl: Duration,
    ) -> Lifecycle {
        Lifecycle {
            store,
            meta,
            blobs,
            pulls: PullRecorder::default(),
            config,
            upload_ttl,
            running: tokio::sync::Mutex::new(()),
        }
    }

    // --- The push path. ---

    /// Before an upload commits `digest` of `size` bytes into `repository`: refuse it if it
    /// would exceed the project's quota (`Denied`, the session cancelled so nothing is
    /// counted), then pin the digest so the collector leaves it alone until it is linked.
    /// If the collector is deleting that very blob, wait until it is done: the commit then
    /// stores the uploaded bytes afresh.
    pub async fn before_commit(
        &self,
        repository: &str,
        upload: &str,
        digest: &Digest,
        size: u64,
    ) -> StorageResult<()> {
        let project = project_of(repository);
        let policy = self.store.project_policy(project).await?;
        if let Some(quota) = policy.quota_bytes
            && !self.store.project_has_blob(project, digest).await?
        {
            let usage = self.store.quota_usage(project).await?.bytes;
            if usage.saturating_add(size) > quota {
                let _ = self.blobs.cancel_upload(upload).await;
                self.meta.delete_upload(upload).await?;
                return Err(StorageError::Denied(
                    berth_storage::lifecycle::quota_message(project, quota, usage, size),
                ));
            }
        }
        let deadline = tokio::time::Instant::now() + TOMBSTONE_WAIT;
        loop {
            match self.store.pin_upload(upload, digest).await {
                Err(StorageError::Conflict(m)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StorageError::Conflict(m));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// The limits a manifest PUT of `tag` into `repository` is checked against.
    pub async fn push_limits(
        &self,
        repository: &str,
        tag: Option<&str>,
    ) -> StorageResult<PushLimits> {
        let project = project_of(repository);
        let policy = self.store.project_policy(project).await?;
        Ok(PushLimits {
            project: project.to_owned(),
            quota_bytes: policy.quota_bytes,
            max_repositories: policy.max_repositories,
            immutable_rule: tag.and_then(|t| immutable_rule(&policy, t).map(str::to_owned)),
        })
    }

    /// `Denied` if deleting `tag` (or, with `digest`, the manifest and all its tags) would
    /// remove an immutable tag.
    pub async fn check_delete(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> StorageResult<()> {
        let project = project_of(repository);
        let policy = self.store.project_policy(project).await?;
        if policy.immutable_tags.is_empty() {
            return Ok(());
        }
        let tags: Vec<String> = match (tag, digest) {
            (Some(t), _) => vec![t.to_owned()],
            (None, Some(d)) => self
                .store
                .tag_times(repository)
                .await?
                .into_iter()
                .filter(|t| &t.digest == d)
                .map(|t| t.tag)
                .collect(),
            (None, None) => Vec::new(),
        };
        for t in tags {
            if let Some(rule) = immutable_rule(&policy, &t) {
                return Err(StorageError::Denied(format!(
                    "tag {repository}:{t} is immutable (rule \"{rule}\" of project {project}): \
                     it cannot be deleted; a project administrator can change the rule"
                )));
            }
        }
        Ok(())
    }

    // --- Garbage collection. ---

    /// Run one GC cycle (see the module documentation) and record it.
    pub async fn run_gc(&self, opts: &GcOptions) -> StorageResult<GcRun> {
        let _one = self.running.lock().await;
        // And one cycle among every replica sharing the store.
        let _lease = self.store.exclusive_gc().await?;
        let started_at = now();
        let mut run = GcRun {
            kind: "gc".into(),
            started_by: opts.started_by.clone(),
            dry_run: opts.dry_run,
            started_at,
            ..GcRun::default()
        };
        let mut errors = Vec::new();
        let mut removed_names = Vec::new();
        if let Err(e) = self
            .gc_steps(opts.dry_run, &mut run, &mut errors, &mut removed_names)
            .await
        {
            errors.push(e.to_string());
        }
        if let Err(e) = self.flush_pulls().await {
            errors.push(format!("flushing pull times: {e}"));
        }
        if !opts.dry_run {
            match self.prune_audit().await {
                Ok(0) => {}
                Ok(n) => removed_names.push(format!("{n} audit events")),
                Err(e) => errors.push(format!("pruning the audit log: {e}")),
            }
        }
        run.finished_at = now();
        run.errors = errors.join("\n");
        let verb = if opts.dry_run {
            "would remove"
        } else {
            "removed"
        };
        run.detail = format!(
            "{verb} {} manifests and {} blobs ({} bytes); {} candidates left{}{}",
            run.manifests_removed,
            run.blobs_removed,
            run.bytes_freed,
            self.store.gc_backlog().await.unwrap_or(0),
            if removed_names.is_empty() { "" } else { ": " },
            removed_names.join(", ")
        );
        run.id = self.store.record_gc_run(&run).await?;
        Ok(run)
    }

    async fn gc_steps(
        &self,
        dry_run: bool,
        run: &mut GcRun,
        errors: &mut Vec<String>,
        names: &mut Vec<String>,
    ) -> StorageResult<()> {
        let started = now();
        // 1. Tombstones of an interrupted cycle.
        if !dry_run {
            for digest in self.store.tombstones().await? {
                match self.delete_bytes(&digest).await {
                    Ok(bytes) => {
                        run.blobs_removed += 1;
                        run.bytes_freed += bytes;
                    }
                    Err(e) => errors.push(format!("blob {digest}: {e}")),
                }
            }
        }
        // 2. Abandoned uploads.
        let cutoff = started - i64::try_from(self.upload_ttl.as_secs()).unwrap_or(i64::MAX);
        loop {
            let stale = self.store.stale_uploads(cutoff, PAGE).await?;
            if stale.is_empty() || dry_run {
                break;
            }
            for s in &stale {
                match self.blobs.cancel_upload(&s.id).await {
                    Ok(()) | Err(StorageError::UploadUnknown(_)) => {}
                    Err(e) => errors.push(format!("upload {}: {e}", s.id)),
                }
                self.meta.delete_upload(&s.id).await?;
            }
        }
        // 3. Manifests.
        let untagged_before = if self.config.delete_untagged {
            started - secs(self.config.untagged_delay_secs)
        } else {
            i64::MIN
        };
        let mut after = None;
        loop {
            let page = self
                .store
                .gc_candidates(CandidateKind::Manifest, after.as_ref(), PAGE)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for c in &page {
                match self
                    .store
                    .collect_manifest(&c.repository, &c.digest, untagged_before, dry_run)
                    .await
                {
                    Ok(ManifestVerdict::Removed(bytes)) => {
                        run.manifests_removed += 1;
                        run.bytes_freed += bytes;
                        if names.len() < DETAIL_NAMES {
                            names.push(format!("{}@{}", c.repository, c.digest));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(format!("manifest {}@{}: {e}", c.repository, c.digest)),
                }
            }
            after = Some(last);
        }
        // 4. Blobs (in `since` order: stop at the first one inside the grace period).
        // Measured from now: blobs the manifest phase just released wait a grace period
        // like any other.
        // Change-log times are whole seconds (a change at 10.99 s is logged as 10), so a
        // grace of G seconds compared as `since <= now - G` could end after a mere instant;
        // one more second makes every blob wait at least G seconds (G = 0: no grace).
        let grace = secs(self.config.blob_grace_secs);
        let unreferenced_before = now() - grace - i64::from(grace > 0);
        let mut after = None;
        'blobs: loop {
            let page = self
                .store
                .gc_candidates(CandidateKind::Blob, after.as_ref(), PAGE)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for c in &page {
                if c.since > unreferenced_before {
                    break 'blobs;
                }
                match self
                    .store
                    .tombstone_blob(&c.digest, unreferenced_before, dry_run)
                    .await
                {
                    Ok(BlobVerdict::Tombstoned) if dry_run => {
                        run.blobs_removed += 1;
                        run.bytes_freed += self.blobs.stat(&c.digest).await?.unwrap_or(0);
                    }
                    Ok(BlobVerdict::Tombstoned) => match self.delete_bytes(&c.digest).await {
                        Ok(bytes) => {
                            run.blobs_removed += 1;
                            run.bytes_freed += bytes;
                        }
                        Err(e) => errors.push(format!("blob {}: {e}", c.digest)),
                    },
                    Ok(_) => {}
                    Err(e) => errors.push(format!("blob {}: {e}", c.digest)),
                }
            }
            after = Some(last);
        }
        Ok(())
    }

    /// Delete a tombstoned blob's bytes, then its tombstone. Returns the bytes freed.
    async fn delete_bytes(&self, digest: &Digest) -> StorageResult<u64> {
        let size = self.blobs.stat(digest).await?.unwrap_or(0);
        match self.blobs.delete(digest).await {
            Ok(()) | Err(StorageError::BlobUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        self.store.clear_tombstone(digest).await?;
        Ok(size)
    }

    /// Write the pull times gathered in memory.
    pub async fn flush_pulls(&self) -> StorageResult<usize> {
        self.pulls.flush(self.store.as_ref()).await
    }

    /// Apply the audit-log retention settings.
    pub async fn prune_audit(&self) -> StorageResult<u64> {
        let before = self
            .config
            .audit_keep_days
            .map(|d| now() - secs(d.saturating_mul(86_400)));
        if before.is_none() && self.config.audit_keep_entries.is_none() {
            return Ok(0);
        }
        self.store
            .prune_audit(before, self.config.audit_keep_entries)
            .await
    }

    // --- Retention. ---

    /// Apply `project`'s retention policy (or, with `dry_run`, list what it would remove)
    /// and record the run. Removed tags' manifests are collected by GC.
    pub async fn run_retention(
        &self,
        project: &str,
        dry_run: bool,
        started_by: &str,
    ) -> StorageResult<GcRun> {
        let started_at = now();
        self.flush_pulls().await?;
        let policy = self.store.project_policy(project).await?;
        let retention: RetentionPolicy = match &policy.retention_json {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                StorageError::Database(format!("retention policy of {project}: {e}"))
            })?,
            None => RetentionPolicy::default(),
        };
        let mut run = GcRun {
            kind: "retention".into(),
            started_by: started_by.to_owned(),
            dry_run,
            started_at,
            ..GcRun::default()
        };
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        let lo = format!("{project}/");
        let repositories = self.project_repositories(project).await?;
        for repository in repositories {
            let short = &repository[lo.len()..];
            if !retention.repositories.is_empty()
                && !retention
                    .repositories
                    .iter()
                    .any(|p| pattern_matches(p, short))
            {
                continue;
            }
            if retention.keeps_anything_by_rule() {
                let mut tags = self.store.tag_times(&repository).await?;
                tags.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.tag.cmp(&b.tag)));
                let recent = retention
                    .keep_days
                    .map(|d| started_at - i64::from(d) * 86_400);
                for (i, t) in tags.iter().enumerate() {
                    let keep = immutable_rule(&policy, &t.tag).is_some()
                        || retention.keep_last.is_some_and(|n| i < n as usize)
                        || retention
                            .keep_tags
                            .iter()
                            .any(|p| pattern_matches(p, &t.tag))
                        || recent.is_some_and(|r| {
                            t.pushed_at >= r || t.pulled_at.is_some_and(|p| p >= r)
                        });
                    if keep {
                        continue;
                    }
                    if !dry_run {
                        match self.meta.delete_tag(&repository, &t.tag).await {
                            Ok(()) | Err(StorageError::NotFound(_)) => {}
                            Err(e) => {
                                errors.push(format!("{repository}:{}: {e}", t.tag));
                                continue;
                            }
                        }
                    }
                    run.tags_removed += 1;
                    if removed.len() < DETAIL_NAMES {
                        removed.push(format!("{repository}:{}", t.tag));
                    }
                }
            }
            if let Some(days) = retention.untagged_days {
                let cutoff = started_at - i64::from(days) * 86_400;
                let mut after: Option<String> = None;
                loop {
                    let page = self
                        .meta
                        .untagged_manifests(&repository, after.as_deref(), PAGE)
                        .await?;
                    let done = page.len() < PAGE as usize;
                    for m in &page {
                        if m.pushed_at >= cutoff {
                            continue;
                        }
                        if !dry_run {
                            match self.meta.delete_manifest(&repository, &m.digest).await {
                                Ok(()) | Err(StorageError::NotFound(_)) => {}
                                Err(e) => {
                                    errors.push(format!("{repository}@{}: {e}", m.digest));
                                    continue;
                                }
                            }
                        }
                        run.manifests_removed += 1;
                        if removed.len() < DETAIL_NAMES {
                            removed.push(format!("{repository}@{}", m.digest));
                        }
                    }
                    after = page.last().map(|m| m.digest.to_string());
                    if done {
                        break;
                    }
                }
            }
        }
        run.finished_at = now();
        run.errors = errors.join("\n");
        let verb = if dry_run { "would remove" } else { "removed" };
        run.detail = format!(
            "project {project}: {verb} {} tags and {} untagged manifests{}{}",
            run.tags_removed,
            run.manifests_removed,
            if removed.is_empty() { "" } else { ": " },
            removed.join(", ")
        );
        run.id = self.store.record_gc_run(&run).await?;
        Ok(run)
    }

    /// Every repository `project/…`, in order.
    pub async fn project_repositories(&self, project: &str) -> StorageResult<Vec<String>> {
        let (lo, hi) = (format!("{project}/"), format!("{project}0"));
        let mut out = Vec::new();
        let mut last = lo;
        loop {
            let page = self.meta.list_repositories(Some(&last), PAGE).await?;
            let full = page.len() == PAGE as usize;
            let Some(end) = page.last().cloned() else {
                return Ok(out);
            };
            out.extend(page.into_iter().filter(|r| *r < hi));
            if !full || end >= hi {
                return Ok(out);
            }
            last = end;
        }
    }

    /// Delete every repository of `project` (before deleting the project itself); their
    /// blobs and manifests are reclaimed by the next GC cycles. Returns how many.
    pub async fn purge_project(&self, project: &str) -> StorageResult<usize> {
        let (lo, hi) = (format!("{project}/"), format!("{project}0"));
        let mut n = 0;
        loop {
            let page = self.meta.list_repositories(Some(&lo), PAGE).await?;
            let mine: Vec<String> = page.into_iter().filter(|r| *r < hi).collect();
            if mine.is_empty() {
                return Ok(n);
            }
            for r in mine {
                match self.store.delete_repository(&r).await {
                    Ok(()) => n += 1,
                    Err(StorageError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Run GC, retention, pull flushes and audit pruning on the configured schedules until
    /// the process exits.
    pub fn spawn_schedules(self: &Arc<Self>, auth: Arc<crate::auth::Auth>) {
        let c = &self.config;
        if c.pull_flush_secs > 0 {
            let me = self.clone();
            let every = Duration::from_secs(c.pull_flush_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = me.flush_pulls().await {
                        tracing::warn!(error = %e, "could not record pull times");
                    }
                }
            });
        }
        if c.gc_interval_secs > 0 {
            let me = self.clone();
            let auth = auth.clone();
            let every = Duration::from_secs(c.gc_interval_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let opts = GcOptions {
                        dry_run: false,
                        started_by: "schedule".into(),
                    };
                    match me.run_gc(&opts).await {
                        Ok(run) => audit_run(&auth, &run).await,
                        Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                    }
                }
            });
        }
        if c.retention_interval_secs > 0 {
            let me = self.clone();
            let every = Duration::from_secs(c.retention_interval_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let policies = match me.store.project_policies().await {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read retention policies");
                            continue;
                        }
                    };
                    for p in policies.iter().filter(|p| p.retention_json.is_some()) {
                        match me.run_retention(&p.project, false, "schedule").await {
                            Ok(run) => audit_run(&auth, &run).await,
                            Err(e) => {
                                tracing::warn!(project = %p.project, error = %e, "retention failed")
                            }
                        }
                    }
                }
            });
        }
    }
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 2)
}

/// Write a run into the audit log (`gc` or `retention`, with its summary).
pub async fn audit_run(auth: &crate::auth::Auth, run: &GcRun) {
    let action = if run.dry_run {
        format!("{}.dry-run", run.kind)
    } else {
        run.kind.clone()
    };
    let detail = if run.errors.is_empty() {
        run.detail.clone()
    } else {
        format!("{}; errors: {}", run.detail, run.errors.replace('\n', "; "))
    };
    tracing::info!(kind = %run.kind, dry_run = run.dry_run, manifests = run.manifests_removed,
        blobs = run.blobs_removed, bytes = run.bytes_freed, "{}", run.detail);
    auth.audit(
        &run.started_by,
        &action,
        "registry",
        std::net::IpAddr::from([127, 0, 0, 1]),
        &detail,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_storage::fs::FsBlobStore;
    use berth_storage::sqlite::SqliteMetadata;
    use berth_storage::{NewManifest, UploadSession};

    async fn setup(dir: &std::path::Path) -> (Lifecycle, SqliteMetadata, Arc<FsBlobStore>) {
        let meta = SqliteMetadata::open(&dir.join("metadata.db"))
            .await
            .unwrap();
        let blobs = Arc::new(FsBlobStore::open(dir.to_path_buf()).await.unwrap());
        let config = LifecycleConfig {
            blob_grace_secs: 0,
            untagged_delay_secs: 0,
            ..LifecycleConfig::default()
        };
        let lc = Lifecycle::new(
            Arc::new(meta.clone()),
            Arc::new(meta.clone()),
            blobs.clone(),
            config,
            Duration::from_secs(3600),
        );
        (lc, meta, blobs)
    }

    async fn upload(blobs: &FsBlobStore, data: &[u8]) -> String {
        let id = blobs.start_upload().await.unwrap();
        let body: berth_storage::ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(
            bytes::Bytes::copy_from_slice(data),
        )]));
        blobs.append(&id, None, body, u64::MAX).await.unwrap();
        id
    }

    fn opts() -> GcOptions {
        GcOptions {
            dry_run: false,
            started_by: "test".into(),
        }
    }

    /// A client re-uploads a blob the collector has just tombstoned: the commit waits until
    /// the collector has deleted the old bytes, then stores the client's bytes; nothing is lost.
    #[tokio::test]
    async fn reupload_of_a_blob_being_collected_waits_and_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (lc, meta, blobs) = setup(dir.path()).await;
        let data = b"layer that GC is collecting".to_vec();
        let d = Digest::sha256(&data);
        let id = upload(&blobs, &data).await;
        blobs.finish_upload(&id, &d).await.unwrap();
        meta.link_blob("p/r", &d, data.len() as u64).await.unwrap();
        // The collector's transaction: unreferenced, so tombstoned (bytes still there).
        assert_eq!(
            lc.store
                .tombstone_blob(&d, i64::MAX / 2, false)
                .await
                .unwrap(),
            BlobVerdict::Tombstoned
        );
        // The client pushes the same content again.
        let id = upload(&blobs, &data).await;
        meta.create_upload(UploadSession {
            id: id.clone(),
            repository: "p/r".into(),
            started_at: now(),
            owner: "user:test".into(),
        })
        .await
        .unwrap();
        let lc = Arc::new(lc);
        let waiting = {
            let (lc, id, d) = (lc.clone(), id.clone(), d.clone());
            tokio::spawn(async move { lc.before_commit("p/r", &id, &d, 27).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !waiting.is_finished(),
            "the commit must wait for the collector"
        );
        // The collector finishes: bytes deleted, tombstone cleared.
        blobs.delete(&d).await.unwrap();
        lc.store.clear_tombstone(&d).await.unwrap();
        waiting.await.unwrap().unwrap();
        // Pinned now: another cycle cannot take it, and the commit stores the new bytes.
        assert_eq!(
            lc.store
                .tombstone_blob(&d, i64::MAX / 2, false)
                .await
                .unwrap(),
            BlobVerdict::Kept
        );
        blobs.finish_upload(&id, &d).await.unwrap();
        meta.link_blob("p/r", &d, data.len() as u64).await.unwrap();
        meta.delete_upload(&id).await.unwrap();
        assert_eq!(blobs.stat(&d).await.unwrap(), Some(data.len() as u64));
    }

    /// A cycle removes untagged manifests and then their unreferenced blobs, keeps what is
    /// shared, and the next cycle has nothing left to look at (incremental).
    #[tokio::test]
    async fn cycle_collects_garbage_and_the_next_one_has_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let (lc, meta, blobs) = setup(dir.path()).await;
        let shared = b"shared layer".to_vec();
        let own = b"own layer".to_vec();
        let (ds, dn) = (Digest::sha256(&shared), Digest::sha256(&own));
        for (data, d) in [(&shared, &ds), (&own, &dn)] {
            let id = upload(&blobs, data).await;
            blobs.finish_upload(&id, d).await.unwrap();
            meta.link_blob("p/a", d, data.len() as u64).await.unwrap();
        }
        let manifest = |content: &str, tag: &str, blobs: Vec<Digest>| NewManifest {
            repository: "p/a".into(),
            digest: Digest::sha256(content.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: content.as_bytes().to_vec(),
            tag: Some(tag.into()),
            blobs,
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations_json: None,
        };
        let keep = manifest("{\"keep\":1}", "keep", vec![ds.clone()]);
        let drop = manifest("{\"drop\":1}", "drop", vec![ds.clone(), dn.clone()]);
        meta.put_manifest(keep).await.unwrap();
        meta.put_manifest(drop.clone()).await.unwrap();
        meta.delete_tag("p/a", "drop").await.unwrap();
        let dry = lc
            .run_gc(&GcOptions {
                dry_run: true,
                started_by: "test".into(),
            })
            .await
            .unwrap();
        assert_eq!(dry.manifests_removed, 1);
        assert!(meta.manifest_exists("p/a", &drop.digest).await.unwrap());
        let run = lc.run_gc(&opts()).await.unwrap();
        assert_eq!(run.errors, "");
        assert_eq!(run.manifests_removed, 1);
        assert_eq!(run.blobs_removed, 1, "{}", run.detail);
        assert_eq!(blobs.stat(&dn).await.unwrap(), None);
        assert_eq!(blobs.stat(&ds).await.unwrap(), Some(shared.len() as u64));
        assert_eq!(lc.store.gc_backlog().await.unwrap(), 0);
        let again = lc.run_gc(&opts()).await.unwrap();
        assert_eq!((again.manifests_removed, again.blobs_removed), (0, 0));
        let runs = lc.store.gc_runs(10).await.unwrap();
        assert_eq!(runs.len(), 3);
        assert!(runs[2].dry_run);
    }

    /// Pull times are kept in memory until flushed, then visible to retention.
    #[tokio::test]
    async fn pulls_are_batched() {
        let dir = tempfile::tempdir().unwrap();
        let (lc, meta, _blobs) = setup(dir.path()).await;
        let m = NewManifest {
            repository: "p/a".into(),
            digest: Digest::sha256(b"{}"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: b"{}".to_vec(),
            tag: Some("t".into()),
            blobs: Vec::new(),
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations_json: None,
        };
        meta.put_manifest(m.clone()).await.unwrap();
        lc.pulls.record("p/a", &m.digest);
        lc.pulls.record("p/a", &m.digest);
        assert_eq!(lc.store.tag_times("p/a").await.unwrap()[0].pulled_at, None);
        assert_eq!(lc.flush_pulls().await.unwrap(), 1);
        assert!(
            lc.store.tag_times("p/a").await.unwrap()[0]
                .pulled_at
                .is_some()
        );
        assert_eq!(lc.flush_pulls().await.unwrap(), 0);
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("v*", "v1.2"));
        assert!(pattern_matches("v*", "v"));
        assert!(!pattern_matches("v*", "latest"));
        assert!(pattern_matches("release-*-rc", "release-1-rc"));
        assert!(!pattern_matches("release-*-rc", "release-1"));
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("a*b*c", "aXbYc"));
        assert!(!pattern_matches("a*b*c", "acb"));
        assert!(pattern_matches("latest", "latest"));
        assert!(!pattern_matches("latest", "latest2"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }

    #[test]
    fn projects() {
        assert_eq!(project_of("library/nginx"), "library");
        assert_eq!(project_of("team/a/b"), "team");
        assert_eq!(project_of("solo"), "solo");
    }

    #[test]
    fn retention_policy_json() {
        let p: RetentionPolicy =
            serde_json::from_str(r#"{"keep_last":3,"keep_tags":["v*"],"untagged_days":7}"#)
                .unwrap();
        assert_eq!(p.keep_last, Some(3));
        assert!(p.keeps_anything_by_rule());
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"keep":1}"#).is_err());
        assert!(!RetentionPolicy::default().keeps_anything_by_rule());
    }
}

/// Operations of the admin API, the console and the CLI, with their access checks.
pub mod ops {
    use serde::{Deserialize, Serialize};

    use super::{GcOptions, RetentionPolicy, audit_run};
    use crate::admin;
    use crate::auth::Caller;
    use crate::error::{ApiError, ApiResult};
    use crate::state::AppState;
    use berth_proto::error::ErrorCode;
    use berth_storage::{GcRun, ProjectPolicy};

    /// A GC or retention run as the API shows it.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct RunView {
        pub id: i64,
        pub kind: String,
        pub started_by: String,
        pub dry_run: bool,
        pub started_at: i64,
        pub finished_at: i64,
        pub manifests_removed: u64,
        pub tags_removed: u64,
        pub blobs_removed: u64,
        pub bytes_freed: u64,
        pub errors: Vec<String>,
        pub detail: String,
    }

    impl From<GcRun> for RunView {
        fn from(r: GcRun) -> Self {
            RunView {
                id: r.id,
                kind: r.kind,
                started_by: r.started_by,
                dry_run: r.dry_run,
                started_at: r.started_at,
                finished_at: r.finished_at,
                manifests_removed: r.manifests_removed,
                tags_removed: r.tags_removed,
                blobs_removed: r.blobs_removed,
                bytes_freed: r.bytes_freed,
                errors: r
                    .errors
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
                detail: r.detail,
            }
        }
    }

    /// A project's storage policy and usage.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct PolicyView {
        pub project: String,
        pub quota_bytes: Option<u64>,
        pub max_repositories: Option<u64>,
        pub immutable_tags: Vec<String>,
        pub retention: Option<RetentionPolicy>,
        pub usage_bytes: u64,
        pub repositories: u64,
    }

    /// A change of policy (absent fields stay as they are; `null` clears a limit).
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicyUpdate {
        #[serde(default, with = "double_option")]
        pub quota_bytes: Option<Option<u64>>,
        #[serde(default, with = "double_option")]
        pub max_repositories: Option<Option<u64>>,
        #[serde(default)]
        pub immutable_tags: Option<Vec<String>>,
        #[serde(default, with = "double_option")]
        pub retention: Option<Option<RetentionPolicy>>,
    }

    mod double_option {
        use serde::{Deserialize, Deserializer};
        pub fn deserialize<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
        where
            T: Deserialize<'de>,
            D: Deserializer<'de>,
        {
            Option::<T>::deserialize(d).map(Some)
        }
    }

    fn bad(detail: String) -> ApiError {
        ApiError::new(ErrorCode::Unsupported, detail)
            .with_status(axum::http::StatusCode::BAD_REQUEST)
    }

    /// Run GC now (system administrators).
    pub async fn run_gc(
        state: &AppState,
        caller: &Caller,
        dry_run: bool,
        via: &str,
    ) -> ApiResult<RunView> {
        admin::require_system_admin(caller, "run garbage collection")?;
        let opts = GcOptions {
            dry_run,
            started_by: format!("{via}:{}", caller.actor()),
        };
        let run = state.lifecycle.run_gc(&opts).await?;
        audit_run(&state.auth, &run).await;
        Ok(run.into())
    }

    /// Recent GC and retention runs (system administrators).
    pub async fn runs(state: &AppState, caller: &Caller, limit: u32) -> ApiResult<Vec<RunView>> {
        admin::require_system_admin(caller, "list garbage collection runs")?;
        let runs = state.lifecycle.store.gc_runs(limit.clamp(1, 1000)).await?;
        Ok(runs.into_iter().map(RunView::from).collect())
    }

    async fn view(state: &AppState, p: ProjectPolicy) -> ApiResult<PolicyView> {
        let usage = state.lifecycle.store.quota_usage(&p.project).await?;
        let retention = match &p.retention_json {
            Some(j) => Some(serde_json::from_str(j).map_err(|e| {
                ApiError::from(berth_storage::StorageError::Database(format!(
                    "stored retention policy of {}: {e}",
                    p.project
                )))
            })?),
            None => None,
        };
        Ok(PolicyView {
            project: p.project,
            quota_bytes: p.quota_bytes,
            max_repositories: p.max_repositories,
            immutable_tags: p.immutable_tags,
            retention,
            usage_bytes: usage.bytes,
            repositories: usage.repositories,
        })
    }

    /// A project's policy and usage (whoever may see the project).
    pub async fn policy(state: &AppState, caller: &Caller, project: &str) -> ApiResult<PolicyView> {
        admin::access(&state.auth, caller, project).await?;
        let p = state.lifecycle.store.project_policy(project).await?;
        view(state, p).await
    }

    /// Change a project's policy: immutable tags and retention by its project
    /// administrators, quota and repository limit by system administrators.
    pub async fn set_policy(
        state: &AppState,
        caller: &Caller,
        project: &str,
        update: PolicyUpdate,
    ) -> ApiResult<PolicyView> {
        admin::require_manage(&state.auth, caller, project, "change the storage policy").await?;
        if (update.quota_bytes.is_some() || update.max_repositories.is_some())
            && !caller.principal.is_system_admin()
        {
            admin::require_system_admin(caller, "change a project's quota")?;
        }
        let mut p = state.lifecycle.store.project_policy(project).await?;
        if let Some(q) = update.quota_bytes {
            p.quota_bytes = q;
        }
        if let Some(m) = update.max_repositories {
            p.max_repositories = m;
        }
        if let Some(tags) = update.immutable_tags {
            if tags.len() > 100 || tags.iter().any(|t| t.is_empty() || t.len() > 128) {
                return Err(bad(
                    "immutable_tags: at most 100 patterns of 1 to 128 characters".into(),
                ));
            }
            p.immutable_tags = tags;
        }
        if let Some(r) = update.retention {
            p.retention_json = match r {
                Some(r) => Some(serde_json::to_string(&r).map_err(|e| bad(e.to_string()))?),
                None => None,
            };
        }
        state.lifecycle.store.set_project_policy(&p).await?;
        state
            .auth
            .audit(
                &caller.actor(),
                "project.policy",
                &format!("project:{project}"),
                caller.addr,
                &format!(
                    "quota_bytes={:?} max_repositories={:?} immutable_tags={:?} retention={}",
                    p.quota_bytes,
                    p.max_repositories,
                    p.immutable_tags,
                    p.retention_json.as_deref().unwrap_or("none")
                ),
            )
            .await;
        view(state, p).await
    }

    /// Delete a project with everything in it (system administrators): its repositories
    /// first (their manifests and blobs are reclaimed by the next GC cycles), then the
    /// project, its members and robots. Returns how many repositories were deleted.
    pub async fn purge_project(
        state: &AppState,
        caller: &Caller,
        project: &str,
    ) -> ApiResult<usize> {
        admin::require_system_admin(caller, "delete a project with its repositories")?;
        admin::access(&state.auth, caller, project).await?;
        let n = state.lifecycle.purge_project(project).await?;
        state
            .auth
            .audit(
                &caller.actor(),
                "project.purge",
                &format!("project:{project}"),
                caller.addr,
                &format!("{n} repositories deleted"),
            )
            .await;
        admin::delete_project(&state.auth, caller, project).await?;
        Ok(n)
    }

    /// Run a project's retention policy now (project administrators).
    pub async fn run_retention(
        state: &AppState,
        caller: &Caller,
        project: &str,
        dry_run: bool,
    ) -> ApiResult<RunView> {
        admin::require_manage(&state.auth, caller, project, "run the retention policy").await?;
        let run = state
            .lifecycle
            .run_retention(project, dry_run, &format!("api:{}", caller.actor()))
            .await?;
        audit_run(&state.auth, &run).await;
        Ok(run.into())
    }
}
