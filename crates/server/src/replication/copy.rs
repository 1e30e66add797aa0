//! Copying one artifact (a tag or a digest) from one registry to another with
//! `berth-client`: the manifest tree (an index and every platform's manifest), its blobs
//! (streamed and verified by the client, skipped when the destination has them, mounted
//! from another destination repository when one is known to hold them) and the referrers
//! of every manifest copied (signatures, SBOMs: the OCI referrers API, or the tag-schema
//! fallback on either side).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use berth_client::{ClientError, Descriptor, FetchedManifest, ImageRef, RegistryClient};
use berth_proto::{Digest, Reference};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

/// One registry as the engine sees it: a client set up with its trust and credentials,
/// and its name in an [`ImageRef`].
#[derive(Clone)]
pub struct Side {
    pub client: RegistryClient,
    pub host: String,
}

impl Side {
    pub fn image(&self, repository: &str, reference: &Reference) -> ImageRef {
        let (tag, digest) = match reference {
            Reference::Tag(t) => (Some(t.clone()), None),
            Reference::Digest(d) => (None, Some(d.clone())),
        };
        ImageRef {
            registry: self.host.clone(),
            repository: repository.to_string(),
            tag,
            digest,
        }
    }
}

/// Deepest chain of referrers followed (a signature of an SBOM of an image is depth 2).
const MAX_REFERRER_DEPTH: u32 = 3;
/// Most referrers copied per subject.
const MAX_REFERRERS: usize = 256;
/// Attempts per blob upload, each continuing where the destination's upload got to.
const RESUMES: u32 = 5;
/// Attempts to put one manifest whose blobs or children the destination says it lacks.
const PUT_ATTEMPTS: u32 = 4;

/// The copier of one execution: shared by its concurrent tasks.
pub struct Copier<'a> {
    pub src: &'a Side,
    pub dst: &'a Side,
    pub stop: &'a AtomicBool,
    /// Bounds blob transfers across every execution of this server.
    pub transfers: &'a Semaphore,
    /// Blob digest → a destination repository known to hold it (for cross-repository mounts).
    mounts: Mutex<HashMap<Digest, String>>,
    /// Destination repository → whether it offers the referrers API.
    dst_api: Mutex<HashMap<String, bool>>,
    /// One lock per blob digest: concurrent tasks needing the same blob (a base layer
    /// shared by several images) send it once; the others then find it or mount it.
    blob_locks: Mutex<HashMap<Digest, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// What copying one artifact did.
#[derive(Debug, Default)]
pub struct Copied {
    pub digest: String,
    /// Blob and manifest bytes actually sent.
    pub bytes: u64,
    /// Nothing was missing at the destination.
    pub unchanged: bool,
}

pub(crate) fn stopped() -> ClientError {
    ClientError::Config("the execution was stopped".into())
}

impl<'a> Copier<'a> {
    pub fn new(
        src: &'a Side,
        dst: &'a Side,
        stop: &'a AtomicBool,
        transfers: &'a Semaphore,
    ) -> Self {
        Copier {
            src,
            dst,
            stop,
            transfers,
            mounts: Mutex::default(),
            dst_api: Mutex::default(),
            blob_locks: Mutex::default(),
        }
    }

    fn check_stop(&self) -> berth_client::Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(stopped())
        } else {
            Ok(())
        }
    }

    /// Copy `src_repo:reference` to `dst_repo` (under the same tag, or by digest).
    pub async fn copy(
        &self,
        src_repo: &str,
        dst_repo: &str,
        reference: &Reference,
    ) -> berth_client::Result<Copied> {
        self.check_stop()?;
        let src_img = self.src.image(src_repo, reference);
        let top = self.src.client.get_manifest(&src_img, reference).await?;
        let bytes = AtomicU64::new(0);
        let have = self
            .dst
            .client
            .head_manifest(&self.dst.image(dst_repo, reference), reference)
            .await?;
        let mut unchanged = have.is_some_and(|d| d.digest == top.digest);
        if !unchanged {
            let tag = match reference {
                Reference::Tag(t) => Some(t.as_str()),
                Reference::Digest(_) => None,
            };
            self.copy_tree(src_repo, dst_repo, &top, tag, &bytes)
                .await?;
        }
        // Referrers of the top manifest and of each child.
        let mut subjects = vec![top.digest.clone()];
        if top.is_index() {
            subjects.extend(top.shape()?.manifests.into_iter().map(|d| d.digest));
        }
        for s in subjects {
            if self
                .copy_referrers(src_repo, dst_repo, &s, 1, &bytes)
                .await?
            {
                unchanged = false;
            }
        }
        Ok(Copied {
            digest: top.digest.to_string(),
            bytes: bytes.load(Ordering::Relaxed),
            unchanged,
        })
    }

    /// Copy a manifest (and, for an index, every child not at the destination yet) with its
    /// blobs, then put it under `tag` or its digest.
    fn copy_tree<'b>(
        &'b self,
        src_repo: &'b str,
        dst_repo: &'b str,
        m: &'b FetchedManifest,
        tag: Option<&'b str>,
        bytes: &'b AtomicU64,
    ) -> futures_util::future::BoxFuture<'b, berth_client::Result<()>> {
        Box::pin(async move {
            let reference = match tag {
                Some(t) => Reference::Tag(t.to_string()),
                None => Reference::Digest(m.digest.clone()),
            };
            let dst_img = self.dst.image(dst_repo, &reference);
            let mut attempt = 0;
            loop {
                attempt += 1;
                self.copy_content(src_repo, dst_repo, m, bytes).await?;
                self.check_stop()?;
                match self.dst.client.put_manifest(&dst_img, &reference, m).await {
                    Ok(_) => break,
                    // Another writer of the same content at the destination (a second
                    // rule, a person pushing) can make a blob or child we saw there
                    // briefly unknown (Distribution rewrites its links in place): check
                    // and copy what is missing again, then put the manifest again.
                    Err(e) if content_unknown(&e) && attempt < PUT_ATTEMPTS => {
                        tracing::info!(manifest = %m.digest, attempt, error = %e, "replication: the destination lacks content of a manifest; copying it again");
                        tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            bytes.fetch_add(m.bytes.len() as u64, Ordering::Relaxed);
            Ok(())
        })
    }

    /// What a manifest needs at the destination before it can be put: for an index every
    /// child not there yet (with its blobs), for an image its blobs.
    async fn copy_content(
        &self,
        src_repo: &str,
        dst_repo: &str,
        m: &FetchedManifest,
        bytes: &AtomicU64,
    ) -> berth_client::Result<()> {
        self.check_stop()?;
        let shape = m.shape()?;
        if m.is_index() {
            for child in &shape.manifests {
                let r = Reference::Digest(child.digest.clone());
                if self
                    .dst
                    .client
                    .head_manifest(&self.dst.image(dst_repo, &r), &r)
                    .await?
                    .is_some()
                {
                    continue;
                }
                let cm = self
                    .src
                    .client
                    .get_manifest(&self.src.image(src_repo, &r), &r)
                    .await?;
                self.copy_tree(src_repo, dst_repo, &cm, None, bytes).await?;
            }
        } else {
            let mut blobs: Vec<Descriptor> = Vec::new();
            for d in shape.config.iter().chain(shape.layers.iter()) {
                let foreign = d.urls.as_ref().is_some_and(|u| !u.is_empty())
                    && (d.media_type.contains("nondistributable")
                        || d.media_type.contains("foreign"));
                if !foreign && !blobs.iter().any(|b| b.digest == d.digest) {
                    blobs.push(d.clone());
                }
            }
            let parallel = self.src.client.options().parallel.max(1);
            let futs: Vec<_> = blobs
                .iter()
                .map(|d| self.copy_blob(src_repo, dst_repo, d, bytes))
                .collect();
            // Every blob runs to its end even when another fails (a cut connection), so
            // one failure does not throw away the others' transfers in flight.
            let results: Vec<berth_client::Result<()>> = futures_util::stream::iter(futs)
                .buffer_unordered(parallel)
                .collect()
                .await;
            results
                .into_iter()
                .collect::<berth_client::Result<Vec<()>>>()?;
        }
        Ok(())
    }

    async fn copy_blob(
        &self,
        src_repo: &str,
        dst_repo: &str,
        desc: &Descriptor,
        bytes: &AtomicU64,
    ) -> berth_client::Result<()> {
        self.check_stop()?;
        let dst_img = self
            .dst
            .image(dst_repo, &Reference::Digest(desc.digest.clone()));
        // A blob this execution already saw at the destination (a base layer shared by many
        // images) is mounted from there at once: a mount sends nothing and may run
        // alongside other mounts, so it takes neither the blob's lock nor a transfer slot.
        // Holding the lock for these would copy a base layer's images one at a time.
        if let Some(from) = self.known_at_destination(&desc.digest, dst_repo) {
            match self
                .dst
                .client
                .mount_blob(&dst_img, &desc.digest, &from)
                .await
            {
                Ok(true) => {
                    self.remember(desc, dst_repo);
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(digest = %desc.digest, from, error = %e, "replication: mount failed; sending the blob");
                }
            }
        }
        let lock = self
            .blob_locks
            .lock()
            .unwrap()
            .entry(desc.digest.clone())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        // Sent (or found) by the task that held the lock before: mounted below.
        let mount_from = self.known_at_destination(&desc.digest, dst_repo);
        let _permit = self
            .transfers
            .acquire()
            .await
            .map_err(|_| ClientError::Config("the server is shutting down".into()))?;
        self.check_stop()?;
        let src_img = self
            .src
            .image(src_repo, &Reference::Digest(desc.digest.clone()));
        // A cut connection continues from the offset the destination acknowledged, the
        // source read from there with a `Range` request.
        let open = |offset: u64| {
            let src_img = &src_img;
            async move {
                if offset == 0 {
                    return self.src.client.blob_stream(src_img, desc).await;
                }
                let (s, ranged) = self
                    .src
                    .client
                    .blob_stream_from(src_img, &desc.digest, offset)
                    .await?;
                Ok(if ranged { s } else { skip(s, offset) })
            }
        };
        let pushed = self
            .dst
            .client
            .push_blob_resumable(&dst_img, desc, mount_from.as_deref(), RESUMES, open)
            .await?;
        if pushed.resumed > 0 {
            tracing::info!(digest = %desc.digest, resumed = pushed.resumed, sent = pushed.sent, size = desc.size, "replication: blob upload resumed after a cut");
        }
        bytes.fetch_add(pushed.sent, Ordering::Relaxed);
        self.remember(desc, dst_repo);
        Ok(())
    }

    /// A destination repository other than `dst_repo` known to hold `digest`.
    fn known_at_destination(&self, digest: &Digest, dst_repo: &str) -> Option<String> {
        self.mounts
            .lock()
            .unwrap()
            .get(digest)
            .filter(|r| r.as_str() != dst_repo)
            .cloned()
    }

    fn remember(&self, desc: &Descriptor, dst_repo: &str) {
        self.mounts
            .lock()
            .unwrap()
            .entry(desc.digest.clone())
            .or_insert_with(|| dst_repo.to_string());
    }

    /// Whether the destination repository offers the referrers API (asked once).
    async fn dst_has_api(&self, dst_repo: &str, subject: &Digest) -> berth_client::Result<bool> {
        if let Some(v) = self.dst_api.lock().unwrap().get(dst_repo) {
            return Ok(*v);
        }
        let img = self
            .dst
            .image(dst_repo, &Reference::Digest(subject.clone()));
        let v = self
            .dst
            .client
            .referrers_api(&img, subject)
            .await?
            .is_some();
        self.dst_api.lock().unwrap().insert(dst_repo.to_string(), v);
        Ok(v)
    }

    /// Copy the referrers of `subject` (recursively); `true` if any was missing.
    fn copy_referrers<'b>(
        &'b self,
        src_repo: &'b str,
        dst_repo: &'b str,
        subject: &'b Digest,
        depth: u32,
        bytes: &'b AtomicU64,
    ) -> futures_util::future::BoxFuture<'b, berth_client::Result<bool>> {
        Box::pin(async move {
            if depth > MAX_REFERRER_DEPTH {
                return Ok(false);
            }
            let src_img = self
                .src
                .image(src_repo, &Reference::Digest(subject.clone()));
            let mut list = self.src.client.referrers(&src_img, subject).await?;
            list.truncate(MAX_REFERRERS);
            let mut changed = false;
            for d in &list {
                self.check_stop()?;
                let r = Reference::Digest(d.digest.clone());
                let dst_img = self.dst.image(dst_repo, &r);
                if self.dst.client.head_manifest(&dst_img, &r).await?.is_none() {
                    let m = self
                        .src
                        .client
                        .get_manifest(&self.src.image(src_repo, &r), &r)
                        .await?;
                    self.copy_tree(src_repo, dst_repo, &m, None, bytes).await?;
                    if !self.dst_has_api(dst_repo, subject).await? {
                        self.dst
                            .client
                            .add_fallback_referrer(&dst_img, subject, d)
                            .await?;
                    }
                    changed = true;
                }
                if self
                    .copy_referrers(src_repo, dst_repo, &d.digest, depth + 1, bytes)
                    .await?
                {
                    changed = true;
                }
            }
            Ok(changed)
        })
    }
}

/// `s` without its first `n` bytes (a source that ignored a `Range` request).
fn skip(s: berth_client::ByteStream, n: u64) -> berth_client::ByteStream {
    let mut left = n;
    Box::pin(s.filter_map(move |chunk| {
        let out = match chunk {
            Ok(b) if left >= b.len() as u64 => {
                left -= b.len() as u64;
                None
            }
            Ok(b) => {
                let start = left as usize;
                left = 0;
                Some(Ok(b.slice(start..)))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    }))
}

/// Whether a manifest PUT was refused because the destination does not know a blob or a
/// child manifest it references (`MANIFEST_BLOB_UNKNOWN`, `BLOB_UNKNOWN`, or a child
/// `MANIFEST_UNKNOWN` for an index).
pub fn content_unknown(e: &ClientError) -> bool {
    let m = e.to_string();
    m.contains("MANIFEST_BLOB_UNKNOWN")
        || m.contains("BLOB_UNKNOWN")
        || m.contains("MANIFEST_UNKNOWN")
}

/// Whether an error may go away by trying again (a cut connection, a 5xx, a truncated
/// stream), as opposed to one that will not (missing, refused, misconfigured).
pub fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect(_) | ClientError::Io { .. } | ClientError::Integrity(_) => true,
        ClientError::Registry(m) => !m.contains(" 4") || content_unknown(e),
        _ => false,
    }
}

/// A rule's filter: one glob, or several separated by commas (outside `{…}`); matches when
/// any of them does.
pub fn filter_match(filter: &str, text: &str) -> bool {
    split_top(filter).iter().any(|g| glob_match(g, text))
}

/// The names a filter lists when it has no wildcard (`a/b`, `a/b,c/d`, `a/{b,c}`): the
/// repositories a pull rule can use without listing the source's catalog. `None` when a
/// glob needs the catalog.
pub fn literal_names(filter: &str) -> Option<Vec<String>> {
    if filter.contains(['*', '?']) {
        return None;
    }
    fn expand(p: &str, out: &mut Vec<String>) {
        if let Some(open) = p.find('{')
            && let Some(close) = p[open..].find('}')
        {
            let close = open + close;
            for alt in p[open + 1..close].split(',') {
                expand(&format!("{}{alt}{}", &p[..open], &p[close + 1..]), out);
            }
        } else {
            out.push(p.to_string());
        }
    }
    let mut out = Vec::new();
    for part in split_top(filter) {
        expand(part.trim(), &mut out);
    }
    out.retain(|n| !n.is_empty());
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

/// Split at commas outside `{…}`.
fn split_top(filter: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in filter.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth <= 0 => {
                out.push(filter[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(filter[start..].trim());
    out
}

/// `*` within one path component, `**` across components, `?` one character, `{a,b}`
/// alternatives.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if let Some(open) = pattern.find('{')
        && let Some(close) = pattern[open..].find('}')
    {
        let close = open + close;
        return pattern[open + 1..close].split(',').any(|alt| {
            glob_match(
                &format!("{}{alt}{}", &pattern[..open], &pattern[close + 1..]),
                text,
            )
        });
    }
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=t.len() {
                    if go(rest, &t[i..]) {
                        return true;
                    }
                    if i < t.len() && t[i] == b'/' {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !t.is_empty() && t[0] != b'/' && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("library/*", "library/nginx"));
        assert!(!glob_match("library/*", "library/a/b"));
        assert!(glob_match("library/**", "library/a/b"));
        assert!(glob_match("**", "x/y/z"));
        assert!(glob_match("v1.*", "v1.2"));
        assert!(!glob_match("v1.*", "v2.0"));
        assert!(glob_match("{v1,v2}.?", "v2.0"));
        assert!(!glob_match("{v1,v2}.?", "v3.0"));
        assert!(glob_match("*", "latest"));
        assert!(filter_match("library/a,team/*", "team/x"));
        assert!(filter_match("library/a, team/*", "library/a"));
        assert!(!filter_match("library/a,team/*", "library/b"));
        assert!(filter_match("{v1,v2}.*,dev", "dev"));
        assert_eq!(literal_names("library/*"), None);
        assert_eq!(literal_names("**"), None);
        assert_eq!(
            literal_names("library/{a,b}, team/c").unwrap(),
            ["library/a", "library/b", "team/c"]
        );
        assert_eq!(literal_names("library/nginx").unwrap(), ["library/nginx"]);
    }
}
