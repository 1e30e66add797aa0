//! The repository page (tags, digests, sizes, platforms, config details, referrers, pull
//! commands, deletion) and search.
//!
//! Reading is allowed exactly when the registry would let the viewer pull
//! ([`crate::auth::Auth::actions`]); a repository the viewer may not read is "not found",
//! like a missing one. Deleting goes through the registry itself: [`routes::authorize`]
//! for `DELETE /v2/<name>/manifests/<reference>`, then the registry's delete handler.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use berth_auth::Action;
use berth_proto::Digest;
use berth_proto::route::V2Route;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::pages::not_found;
use super::view::{self, ConfigSummary, human_bytes, time};
use super::{Form, Layout, PageError, PageResult, Viewer, render, respond};
use crate::auth::ChallengeCtx;
use crate::routes::{self, Ctx};
use crate::state::AppState;

/// Tags per page of a repository.
pub(crate) const TAGS_PER_PAGE: u32 = 100;
/// Untagged manifests listed per page of a repository.
const UNTAGGED_PER_PAGE: u32 = 100;
/// Largest image config read for display.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Parsed configs remembered (they are content-addressed: never stale).
const CONFIG_CACHE: usize = 4096;
/// Search results per page, and how many names one search looks at at most.
const SEARCH_PAGE: usize = 50;
const SEARCH_SCAN: usize = 5000;

static CONFIGS: LazyLock<Mutex<HashMap<Digest, Option<ConfigSummary>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The repository name, or a 404 naming the rule it breaks.
fn parse_name(name: &str) -> Result<&str, PageError> {
    berth_proto::name::validate_repository(name)
        .map_err(|e| not_found(format!("{e}; so there is no such repository")))?;
    Ok(name)
}

/// The viewer may pull `name`, or the repository is "not found" to them.
async fn readable(state: &AppState, viewer: &Viewer, name: &str) -> Result<bool, PageError> {
    let actions = state.auth.actions(&viewer.caller, name).await?;
    if !actions.allows(Action::Pull) {
        return Err(not_found(format!(
            "repository {name} not found (or you may not see it; sign in with an account that may pull it)"
        )));
    }
    Ok(actions.allows(Action::Delete))
}

struct TagRow {
    tag: String,
    digest: String,
    short_digest: String,
    bytes: u64,
    size: String,
    pushed: String,
    platforms: String,
    referrers: String,
    selected: bool,
}

struct Referrer {
    digest: String,
    artifact_type: String,
    size: String,
    annotations: Vec<(String, String)>,
}

struct Details {
    tag: String,
    digest: String,
    media_type: String,
    platform: String,
    created: String,
    entrypoint: String,
    cmd: String,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    referrers: Vec<Referrer>,
    note: String,
}

struct UntaggedRow {
    digest: String,
    media_type: String,
    bytes: u64,
    size: String,
    pushed: String,
}

#[derive(Template)]
#[template(path = "repository.html")]
struct RepositoryPage {
    l: Layout,
    name: String,
    project: String,
    tag_count: u64,
    size: String,
    last_push: String,
    rows: Vec<TagRow>,
    next_after: Option<String>,
    page_after: String,
    untagged: Vec<UntaggedRow>,
    untagged_next: Option<String>,
    details: Option<Details>,
    pull_docker: String,
    pull_podman: String,
    pull_berth: String,
    can_delete: bool,
}

#[derive(Deserialize)]
pub(crate) struct RepoQuery {
    #[serde(default)]
    after: String,
    #[serde(default)]
    tag: String,
    /// Page of the untagged manifests: digests after this one.
    #[serde(default)]
    manifests_after: String,
}

/// `GET /repositories/NAME[?after=TAG][&tag=TAG][&manifests_after=DIGEST]`
pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(rest): Path<String>,
    Query(q): Query<RepoQuery>,
) -> Response {
    let result = repository_page(&state, &viewer, &rest, &q).await;
    respond(&viewer, result)
}

async fn repository_page(
    state: &AppState,
    viewer: &Viewer,
    rest: &str,
    q: &RepoQuery,
) -> PageResult {
    let name = parse_name(rest.trim_end_matches('/'))?;
    let can_delete = readable(state, viewer, name).await?;
    let meta = &state.meta;
    let summary = meta
        .repository_summary(name)
        .await?
        .ok_or_else(|| not_found(format!("repository {name} not found")))?;
    let after = (!q.after.is_empty()).then_some(q.after.as_str());
    let mut tags = meta.tag_details(name, after, TAGS_PER_PAGE + 1).await?;
    let next_after = (tags.len() > TAGS_PER_PAGE as usize).then(|| {
        tags.truncate(TAGS_PER_PAGE as usize);
        tags.last().map(|t| t.tag.clone()).unwrap_or_default()
    });

    let manifests_after = (!q.manifests_after.is_empty()).then_some(q.manifests_after.as_str());
    let mut untagged = meta
        .untagged_manifests(name, manifests_after, UNTAGGED_PER_PAGE + 1)
        .await?;
    let untagged_next = (untagged.len() > UNTAGGED_PER_PAGE as usize).then(|| {
        untagged.truncate(UNTAGGED_PER_PAGE as usize);
        untagged
            .last()
            .map(|m| m.digest.to_string())
            .unwrap_or_default()
    });
    let untagged = untagged
        .into_iter()
        .map(|m| UntaggedRow {
            digest: m.digest.to_string(),
            media_type: m.media_type,
            bytes: m.bytes,
            size: human_bytes(m.bytes),
            pushed: time(Some(m.pushed_at)),
        })
        .collect();

    // Each distinct manifest of the page once: its bytes, its referrers, its config.
    let mut manifests: HashMap<Digest, (String, Vec<u8>)> = HashMap::new();
    let mut referrers: HashMap<Digest, Vec<berth_storage::Referrer>> = HashMap::new();
    let mut configs: HashMap<Digest, Option<ConfigSummary>> = HashMap::new();
    let distinct: Vec<Digest> = {
        let mut seen = HashSet::new();
        tags.iter()
            .filter(|t| seen.insert(t.digest.clone()))
            .map(|t| t.digest.clone())
            .collect()
    };
    for digest in &distinct {
        if let Some(m) = meta.manifest_by_digest(name, digest).await? {
            if let Some((config, size)) = view::config_of(&m.content) {
                let summary = config_summary(state, name, &config, size).await;
                configs.insert(digest.clone(), summary);
            }
            manifests.insert(digest.clone(), (m.media_type, m.content));
        }
        referrers.insert(digest.clone(), meta.referrers(name, digest, None).await?);
    }

    let selected_tag = if q.tag.is_empty() {
        tags.first().map(|t| t.tag.clone())
    } else {
        Some(q.tag.clone())
    };
    let rows = tags
        .iter()
        .map(|t| {
            let content = manifests.get(&t.digest).map(|(_, c)| c.as_slice());
            let platforms = match (content, configs.get(&t.digest)) {
                (_, Some(Some(c))) => c.platform.clone().unwrap_or_default(),
                (Some(content), _) => view::index_platforms(content).join(", "),
                _ => String::new(),
            };
            let refs = referrers.get(&t.digest).map_or(&[][..], Vec::as_slice);
            let referrers = describe_referrers(refs);
            let digest = t.digest.to_string();
            TagRow {
                short_digest: digest.chars().take(19).collect(),
                digest,
                bytes: t.bytes,
                size: human_bytes(t.bytes),
                pushed: time(Some(t.pushed_at)),
                platforms,
                referrers,
                selected: selected_tag.as_deref() == Some(t.tag.as_str()),
                tag: t.tag.clone(),
            }
        })
        .collect();

    let details = match &selected_tag {
        Some(tag) => details(state, name, tag, &manifests, &configs, &referrers).await?,
        None => None,
    };
    let pull_tag = details.as_ref().map_or("latest", |d| d.tag.as_str());
    let reference = format!("{}/{name}:{pull_tag}", viewer.host);
    let project = berth_auth::project_of(name).to_string();
    let page = RepositoryPage {
        l: viewer.layout(format!("Repository {name}")),
        project,
        tag_count: summary.tag_count,
        size: human_bytes(summary.bytes),
        last_push: time(summary.last_push),
        rows,
        next_after,
        page_after: q.after.clone(),
        untagged,
        untagged_next,
        pull_docker: format!("docker pull {reference}"),
        pull_podman: format!("podman pull {reference}"),
        pull_berth: format!("berth fetch {reference} --rootfs ./rootfs"),
        details,
        can_delete,
        name: name.to_string(),
    };
    Ok(render(StatusCode::OK, &page))
}

fn describe_referrers(refs: &[berth_storage::Referrer]) -> String {
    if refs.is_empty() {
        return String::new();
    }
    let mut kinds: Vec<&str> = refs
        .iter()
        .map(|r| r.artifact_type.as_deref().unwrap_or(r.media_type.as_str()))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    format!("{} ({})", refs.len(), kinds.join(", "))
}

/// The details section for `tag` (from this page's data, or looked up when the tag is on
/// another page). None when the tag does not exist.
async fn details(
    state: &AppState,
    name: &str,
    tag: &str,
    manifests: &HashMap<Digest, (String, Vec<u8>)>,
    configs: &HashMap<Digest, Option<ConfigSummary>>,
    referrers: &HashMap<Digest, Vec<berth_storage::Referrer>>,
) -> Result<Option<Details>, PageError> {
    let Some(record) = state.meta.manifest_by_tag(name, tag).await? else {
        return Ok(None);
    };
    let digest = record.digest.clone();
    let (media_type, content) = manifests
        .get(&digest)
        .cloned()
        .unwrap_or((record.media_type, record.content));
    let config = match configs.get(&digest) {
        Some(c) => c.clone(),
        None => match view::config_of(&content) {
            Some((config, size)) => config_summary(state, name, &config, size).await,
            None => None,
        },
    };
    let refs = match referrers.get(&digest) {
        Some(r) => r.clone(),
        None => state.meta.referrers(name, &digest, None).await?,
    };
    let is_index = view::config_of(&content).is_none();
    let platform = match &config {
        Some(c) => c.platform.clone().unwrap_or_default(),
        None => view::index_platforms(&content).join(", "),
    };
    let config = config.unwrap_or_default();
    Ok(Some(Details {
        tag: tag.to_string(),
        digest: digest.to_string(),
        media_type,
        platform,
        created: config.created.unwrap_or_default(),
        entrypoint: config.entrypoint.unwrap_or_default(),
        cmd: config.cmd.unwrap_or_default(),
        labels: config.labels,
        annotations: view::annotations(&content),
        referrers: refs
            .iter()
            .map(|r| Referrer {
                digest: r.digest.to_string(),
                artifact_type: r
                    .artifact_type
                    .clone()
                    .unwrap_or_else(|| r.media_type.clone()),
                size: human_bytes(r.size),
                annotations: r
                    .annotations_json
                    .as_deref()
                    .map(|a| view::annotations(format!("{{\"annotations\":{a}}}").as_bytes()))
                    .unwrap_or_default(),
            })
            .collect(),
        note: if is_index {
            "An image index: pick a platform's image with the client; each platform's config is in its own manifest.".into()
        } else {
            String::new()
        },
    }))
}

/// The image config `digest` of `repository` as the console shows it: read through the
/// blob store (only if the repository links it, at most [`MAX_CONFIG_BYTES`]), remembered.
async fn config_summary(
    state: &AppState,
    repository: &str,
    digest: &Digest,
    size: u64,
) -> Option<ConfigSummary> {
    if size > MAX_CONFIG_BYTES {
        return None;
    }
    if let Some(c) = CONFIGS.lock().unwrap().get(digest) {
        return c.clone();
    }
    match state.meta.blob_link(repository, digest).await {
        Ok(Some(_)) => {}
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "config link lookup failed");
            return None;
        }
    }
    let mut blob = match state.blobs.open(digest, None).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "config blob unreadable");
            return None;
        }
    };
    let mut bytes = Vec::with_capacity(blob.len.min(MAX_CONFIG_BYTES) as usize);
    if let Err(e) = (&mut blob.reader)
        .take(MAX_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .await
    {
        tracing::warn!(%digest, error = %e, "config blob read failed");
        return None;
    }
    let summary = view::config_summary(&bytes);
    let mut cache = CONFIGS.lock().unwrap();
    if cache.len() >= CONFIG_CACHE {
        cache.clear();
    }
    cache.insert(digest.clone(), summary.clone());
    summary
}

/// `POST /repositories/NAME/-/delete-tag` (field `tag`) and
/// `POST /repositories/NAME/-/delete-manifest` (field `digest`).
pub(crate) async fn action(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(rest): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let form = Form::read(body).await?;
        viewer.check_csrf(&form)?;
        let (name, verb) = rest
            .rsplit_once("/-/")
            .ok_or_else(|| not_found(format!("there is no action at /repositories/{rest}")))?;
        let name = parse_name(name)?;
        let (reference, what) = match verb {
            "delete-tag" => (form.get("tag"), "Tag"),
            "delete-manifest" => (form.get("digest"), "Manifest"),
            other => {
                return Err(not_found(format!(
                    "there is no action {other:?}; use delete-tag or delete-manifest"
                )));
            }
        };
        if reference.is_empty() {
            return Err(PageError::new(
                StatusCode::BAD_REQUEST,
                "the form names no tag or digest to delete; reload the page and try again",
            ));
        }
        delete_through_registry(&state, &viewer, &headers, name, reference).await?;
        Ok(viewer.redirect(
            &format!("/repositories/{name}"),
            Some(&format!("{what} {reference} deleted from {name}.")),
        ))
    }
    .await;
    respond(&viewer, result)
}

/// `DELETE /v2/<name>/manifests/<reference>` as the viewer: the registry's own
/// authorization and handler (same rights, same audit record).
async fn delete_through_registry(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    name: &str,
    reference: &str,
) -> Result<(), PageError> {
    let ctx = Ctx {
        state: state.clone(),
        caller: viewer.caller.clone(),
        challenge: ChallengeCtx {
            realm: state.auth.realm(headers, None),
        },
        headers: HeaderMap::new(),
        query: HashMap::new(),
        method: Method::DELETE,
    };
    let route = V2Route::Manifest {
        name: name.to_string(),
        reference: reference.to_string(),
    };
    routes::authorize(&ctx, &route, &Method::DELETE).await?;
    crate::manifests::delete(ctx, name, reference).await?;
    Ok(())
}

struct SearchRow {
    name: String,
    project: String,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    l: Layout,
    query: String,
    rows: Vec<SearchRow>,
    next_after: Option<String>,
    searched: bool,
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: String,
}

/// `GET /search?q=TEXT[&after=NAME]`: repositories whose name contains the text and that
/// the viewer may pull (the registry's own check, per repository).
pub(crate) async fn search(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<SearchQuery>,
) -> Response {
    let result = async {
        let needle = q.q.trim().to_lowercase();
        let mut rows = Vec::new();
        let mut next_after = None;
        if !needle.is_empty() {
            let mut after = (!q.after.is_empty()).then(|| q.after.clone());
            let mut scanned = 0;
            'scan: loop {
                let batch = state
                    .meta
                    .search_repositories(&needle, after.as_deref(), 200)
                    .await?;
                for name in &batch {
                    scanned += 1;
                    let actions = state.auth.actions(&viewer.caller, name).await?;
                    if actions.allows(Action::Pull) {
                        rows.push(SearchRow {
                            project: berth_auth::project_of(name).to_string(),
                            name: name.clone(),
                        });
                    }
                    if rows.len() == SEARCH_PAGE || scanned >= SEARCH_SCAN {
                        next_after = Some(name.clone());
                        break 'scan;
                    }
                }
                if batch.len() < 200 {
                    break;
                }
                after = batch.last().cloned();
            }
        }
        let mut l = viewer.layout("Search");
        l.q = q.q.clone();
        let page = SearchPage {
            l,
            query: q.q.clone(),
            rows,
            next_after,
            searched: !needle.is_empty(),
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}
