//! Content discovery: `GET /v2/_catalog`, `GET /v2/<name>/tags/list`,
//! `GET /v2/<name>/referrers/<digest>`. Listings paginate with `n`/`last` and a
//! `Link: <…>; rel="next"` header when more results exist.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_proto::error::ErrorCode;
use berth_proto::manifest::media_types;
use berth_storage::StorageError;
use serde_json::{Value, json};

use crate::blobs::parse_digest;
use crate::error::{ApiError, ApiResult};
use crate::routes::Ctx;

/// The page size asked for: `n` (clamped to the configured maximum) or the maximum.
fn page_size(ctx: &Ctx) -> ApiResult<u32> {
    let max = ctx.state.limits.max_page_size;
    match ctx.query("n") {
        None => Ok(max),
        Some(n) => n
            .parse::<u64>()
            .map(|n| n.min(max as u64) as u32)
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::PaginationNumberInvalid,
                    format!("n={n:?} is not a whole number; use 0 to {max}"),
                )
            }),
    }
}

/// JSON response, with a `Link` header to the next page when `more` is true.
fn page(body: Value, next: Option<String>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(next) = next
        && let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\""))
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

/// Split one extra fetched row off to tell whether a next page exists.
fn paginate(mut rows: Vec<String>, n: u32, path: &str) -> (Vec<String>, Option<String>) {
    if rows.len() > n as usize {
        rows.truncate(n as usize);
        let last = rows.last().cloned().unwrap_or_default();
        let next = format!("{path}?n={n}&last={}", form_encode(&last));
        (rows, Some(next))
    } else {
        (rows, None)
    }
}

/// Percent-encode a query value (names and tags are ASCII; be strict anyway).
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) async fn catalog(ctx: Ctx) -> ApiResult<Response> {
    let n = page_size(&ctx)?;
    if n == 0 {
        return Ok(page(json!({ "repositories": [] }), None));
    }
    let rows = readable_repositories(&ctx, ctx.query("last"), n as usize + 1).await?;
    let (repos, next) = paginate(rows, n, "/v2/_catalog");
    Ok(page(json!({ "repositories": repos }), next))
}

/// Up to `want` repositories after `last` that the caller may read, in order.
async fn readable_repositories(
    ctx: &Ctx,
    last: Option<&str>,
    want: usize,
) -> ApiResult<Vec<String>> {
    let meta = &ctx.state.meta;
    let auth = &ctx.state.auth;
    let principal = &ctx.caller.principal;
    let batch = (want as u32).clamp(100, 1000);
    let mut out = Vec::new();
    let mut cursor = last.map(str::to_owned);
    loop {
        let rows = meta.list_repositories(cursor.as_deref(), batch).await?;
        let exhausted = rows.len() < batch as usize;
        let mut projects: Vec<&str> = rows.iter().map(|r| berth_auth::project_of(r)).collect();
        projects.dedup();
        let lookup = auth.lookup(principal, &projects).await?;
        for repo in &rows {
            if berth_auth::can_read(principal, repo, &lookup) {
                out.push(repo.clone());
                if out.len() == want {
                    return Ok(out);
                }
            }
        }
        cursor = rows.last().cloned();
        if exhausted || cursor.is_none() {
            return Ok(out);
        }
    }
}

pub(crate) async fn tags(ctx: Ctx, name: &str) -> ApiResult<Response> {
    let n = page_size(&ctx)?;
    let unknown = || {
        ApiError::new(
            ErrorCode::NameUnknown,
            format!("repository {name} is not known to this registry"),
        )
    };
    if n == 0 {
        if !ctx.state.meta.repository_exists(name).await? {
            return Err(unknown());
        }
        return Ok(page(json!({ "name": name, "tags": [] }), None));
    }
    let rows = match ctx
        .state
        .meta
        .list_tags(name, ctx.query("last"), n + 1)
        .await
    {
        Ok(rows) => rows,
        Err(StorageError::NotFound(_)) => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    let (tags, next) = paginate(rows, n, &format!("/v2/{name}/tags/list"));
    Ok(page(json!({ "name": name, "tags": tags }), next))
}

pub(crate) async fn referrers(ctx: Ctx, name: &str, digest: &str) -> ApiResult<Response> {
    let subject = parse_digest(digest)?;
    let filter = ctx.query("artifactType").filter(|s| !s.is_empty());
    let rows = ctx.state.meta.referrers(name, &subject, filter).await?;
    let manifests: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut d = json!({
                "mediaType": r.media_type,
                "digest": r.digest.to_string(),
                "size": r.size,
            });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = Value::String(t);
            }
            if let Some(a) = r
                .annotations_json
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, media_types::OCI_INDEX)],
        body.to_string(),
    )
        .into_response();
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
