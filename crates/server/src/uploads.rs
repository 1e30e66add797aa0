//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (start, monolithic, mount),
//! `PATCH`/`PUT`/`GET`/`DELETE /v2/<name>/blobs/uploads/<id>`.
//!
//! Bytes stream straight from the request body into the blob store, which hashes them on
//! the fly; nothing is buffered whole. An upload session belongs to one repository.

use std::io;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_proto::Digest;
use berth_proto::error::ErrorCode;
use berth_proto::range::parse_content_range;
use berth_storage::{ByteStream, UploadSession, UploadState};
use futures_util::TryStreamExt;

use crate::blobs::{digest_header, parse_digest};
use crate::error::{ApiError, ApiResult};
use crate::limits::{Refusal, human_bytes};
use crate::routes::Ctx;
use berth_storage::FULL_ADVICE;

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// `Range` header value for `size` bytes received (`0-0` when empty, as Distribution does).
fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// 202 Accepted for a session in progress.
fn in_progress(name: &str, state: &UploadState) -> Response {
    (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, upload_location(name, &state.id)),
            (header::RANGE, range_value(state.size)),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                state.id.clone(),
            ),
            (header::CONTENT_LENGTH, "0".to_string()),
        ],
    )
        .into_response()
}

/// 201 Created for a committed blob.
fn created(name: &str, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                HeaderValue::from_str(&format!("/v2/{name}/blobs/{digest}")).unwrap(),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest_header(digest),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) async fn start(ctx: Ctx, body: Body, name: &str) -> ApiResult<Response> {
    let _transfer = crate::memory::Transfer::begin();
    let state = ctx.state.clone();

    if let Some(mount) = ctx.query("mount") {
        let digest = parse_digest(mount)?;
        if mountable_size(&ctx, &digest).await?.is_some()
            // Linked in one transaction with the check that the source still links it
            // (and that the collector is not deleting it).
            && state
                .lifecycle
                .store
                .mount_blob(ctx.query("from"), name, &digest)
                .await?
                .is_some()
        {
            return Ok(created(name, &digest));
        }
        // Not mountable: fall through to an ordinary upload session, as the spec says.
    }

    let owner = session_owner(&ctx);
    // Count and insert under one lock, so concurrent POSTs cannot all pass the count.
    let admission = admission_lock(&owner).lock().await;
    admit_session(&ctx, &owner).await?;
    let id = state.blobs.start_upload().await?;
    if let Err(e) = state
        .meta
        .create_upload(UploadSession {
            id: id.clone(),
            repository: name.to_string(),
            started_at: now(),
            owner,
        })
        .await
    {
        let _ = state.blobs.cancel_upload(&id).await;
        return Err(refused(&ctx, e.into()));
    }
    drop(admission);

    if let Some(digest) = ctx.query("digest").map(str::to_owned) {
        // Monolithic upload in a single POST.
        let digest = parse_digest(&digest)?;
        return commit(&ctx, name, &id, Some(body_stream(body)), &digest).await;
    }
    Ok(in_progress(name, &UploadState { id, size: 0 }))
}

/// The lock that makes "count the owner's sessions, then add one" atomic in this process:
/// one of a few stripes, chosen by the owner. (Replicas sharing one database may each
/// admit one session past the limit at the same instant; the bound still holds per replica.)
fn admission_lock(owner: &str) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    const STRIPES: usize = 16;
    static LOCKS: [tokio::sync::Mutex<()>; STRIPES] =
        [const { tokio::sync::Mutex::const_new(()) }; STRIPES];
    let mut hasher = std::hash::DefaultHasher::new();
    owner.hash(&mut hasher);
    &LOCKS[(hasher.finish() % STRIPES as u64) as usize]
}

/// Who an upload session counts against: the user or robot, or the client address for
/// anonymous pushes.
fn session_owner(ctx: &Ctx) -> String {
    match &ctx.caller.principal {
        berth_auth::Principal::Anonymous => format!("addr:{}", ctx.caller.addr),
        berth_auth::Principal::User { name, .. } => format!("user:{name}"),
        berth_auth::Principal::Robot(r) => format!("robot:{}", r.name),
    }
}

/// Refuse a new upload session up front: over the owner's session limit (429), or while
/// free space is below the reserve or smaller than the announced size (507).
async fn admit_session(ctx: &Ctx, owner: &str) -> ApiResult<()> {
    let state = &ctx.state;
    let limit = state.limits.max_upload_sessions;
    let open = state.meta.count_uploads_by_owner(owner).await?;
    if open >= limit {
        let detail = format!(
            "{owner} has {open} upload sessions open; the limit (limits.max_upload_sessions) \
             is {limit}. Finish or cancel (DELETE) some, or wait for abandoned ones to expire"
        );
        state
            .refusals
            .note(ctx.caller.addr, Refusal::UploadSessions, &detail);
        return Err(ApiError::new(ErrorCode::TooManyRequests, detail)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("60")));
    }
    let space = match state.space.report() {
        Ok(space) => space,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the free space of the data directory");
            return Ok(());
        }
    };
    let announced = ctx.query("digest").and(content_length(ctx)).unwrap_or(0);
    if space.in_reserve() || space.free < announced.saturating_add(space.reserve) {
        let needs = if announced > 0 {
            format!("the upload needs {}, ", human_bytes(announced))
        } else {
            String::new()
        };
        let detail = format!(
            "the registry's storage is full: {needs}{} are free and {} are kept in reserve \
             (limits.min_free_bytes / min_free_percent); {FULL_ADVICE}",
            human_bytes(space.free),
            human_bytes(space.reserve),
        );
        return Err(refused(ctx, ApiError::storage_full(detail)));
    }
    Ok(())
}

/// Why a body of the announced `Content-Length` cannot be stored, if the free space
/// already says so (an upload in progress may use the reserve; it may not overflow).
fn does_not_fit(ctx: &Ctx) -> Option<String> {
    let len = content_length(ctx).filter(|n| *n > 0)?;
    let space = ctx.state.space.report().ok()?;
    (len > space.free).then(|| {
        format!(
            "the registry's storage is full: this request needs {}, {} are free; {FULL_ADVICE}",
            human_bytes(len),
            human_bytes(space.free)
        )
    })
}

/// A write of this session ran out of space; the store has already cut the file back to
/// what earlier requests acknowledged. With nothing acknowledged there is nothing to
/// resume (a monolithic upload, or skopeo's and docker's single streamed PATCH): the
/// session and its file are released at once. Otherwise the session stays, holding only
/// the acknowledged bytes, for the client to resume once space is freed or to cancel.
async fn out_of_space(ctx: &Ctx, name: &str, id: &str, msg: String) -> ApiError {
    let state = &ctx.state;
    let kept = match state.blobs.upload_state(id).await {
        Ok(st) if st.size > 0 => Some(st.size),
        _ => None,
    };
    let detail = match kept {
        Some(size) => format!(
            "{msg}. The upload keeps the {size} bytes acknowledged before this request: \
             resume it at offset {size} once space is freed (GET /v2/{name}/blobs/uploads/{id} \
             reports the offset), or cancel it with DELETE"
        ),
        None => {
            let _ = state.blobs.cancel_upload(id).await;
            if let Err(e) = state.meta.delete_upload(id).await {
                tracing::warn!(upload = %id, error = %e, "could not forget a released upload");
            }
            format!("{msg}. The upload was released; push again once space is freed")
        }
    };
    refused(ctx, ApiError::storage_full(detail))
}

/// Count (and log, once a minute per client) an out-of-space refusal.
/// Also counts uploads ended by the body idle timeout.
fn refused(ctx: &Ctx, e: ApiError) -> ApiError {
    if e.status == Some(StatusCode::INSUFFICIENT_STORAGE) {
        ctx.state
            .refusals
            .note(ctx.caller.addr, Refusal::StorageFull, &e.detail);
    } else if e.detail.contains("body_idle_timeout_secs") {
        ctx.state
            .refusals
            .note(ctx.caller.addr, Refusal::BodyIdle, &e.detail);
    }
    e
}

/// The size of a blob that may be mounted into the target repository, if any.
async fn mountable_size(ctx: &Ctx, digest: &Digest) -> ApiResult<Option<u64>> {
    let state = &ctx.state;
    let linked = match ctx.query("from") {
        // Only from a repository the caller may read: otherwise knowing a digest would
        // be enough to copy a private blob (the client then uploads it normally).
        Some(from)
            if berth_proto::name::validate_repository(from).is_ok()
                && state
                    .auth
                    .actions(&ctx.caller, from)
                    .await?
                    .allows(berth_auth::Action::Pull) =>
        {
            state.meta.blob_link(from, digest).await?
        }
        Some(_) => None,
        // Without `from` the spec lets a registry mount any blob it already has; only a
        // system administrator may, since they can read everything anyway.
        None if ctx.caller.principal.is_system_admin() => state.blobs.stat(digest).await?,
        None => None,
    };
    // The link alone is not enough: the bytes must still be there.
    match linked {
        Some(_) => Ok(state.blobs.stat(digest).await?),
        None => Ok(None),
    }
}

/// Check the session exists and belongs to `name`.
async fn session(ctx: &Ctx, name: &str, id: &str) -> ApiResult<UploadState> {
    let unknown = || {
        ApiError::new(
            ErrorCode::BlobUploadUnknown,
            format!(
                "upload {id} is not in progress for {name}; start a new one with POST /v2/{name}/blobs/uploads/"
            ),
        )
    };
    match ctx.state.meta.upload(id).await? {
        Some(s) if s.repository == name => {}
        _ => return Err(unknown()),
    }
    match ctx.state.blobs.upload_state(id).await {
        Ok(s) => Ok(s),
        Err(berth_storage::StorageError::UploadUnknown(_)) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn status(ctx: Ctx, name: &str, id: &str) -> ApiResult<Response> {
    let st = session(&ctx, name, id).await?;
    let mut resp = in_progress(name, &st);
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

pub(crate) async fn patch(ctx: Ctx, body: Body, name: &str, id: &str) -> ApiResult<Response> {
    let _transfer = crate::memory::Transfer::begin();
    let st = session(&ctx, name, id).await?;
    let offset = match ctx.header("content-range") {
        Some(h) => {
            let (start, end) = parse_content_range(h).map_err(|e| {
                ApiError::new(ErrorCode::RangeInvalid, format!("Content-Range {h:?}: {e}"))
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            })?;
            if let Some(len) = content_length(&ctx)
                && len != end - start + 1
            {
                return Err(ApiError::new(
                    ErrorCode::SizeInvalid,
                    format!(
                        "Content-Range {h:?} covers {} bytes but Content-Length is {len}",
                        end - start + 1
                    ),
                ));
            }
            Some(start)
        }
        None => None,
    };
    if let Some(off) = offset
        && off != st.size
    {
        return Err(berth_storage::StorageError::OutOfOrder {
            expected: st.size,
            given: off,
        }
        .into());
    }
    if let Some(msg) = does_not_fit(&ctx) {
        return Err(out_of_space(&ctx, name, id, msg).await);
    }
    let limit = ctx.state.limits.max_blob_bytes;
    // Out of space, the store keeps only what earlier chunks acknowledged and the session
    // stays: the client may resume once space is freed, or cancel it.
    let st = ctx
        .state
        .blobs
        .append(id, offset, body_stream(body), limit)
        .await;
    match st {
        Ok(st) => Ok(in_progress(name, &st)),
        Err(berth_storage::StorageError::Full(msg)) => Err(out_of_space(&ctx, name, id, msg).await),
        Err(e) => Err(refused(&ctx, e.into())),
    }
}

fn content_length(ctx: &Ctx) -> Option<u64> {
    ctx.header("content-length").and_then(|v| v.parse().ok())
}

pub(crate) async fn finish(ctx: Ctx, body: Body, name: &str, id: &str) -> ApiResult<Response> {
    let _transfer = crate::memory::Transfer::begin();
    let digest = ctx
        .query("digest")
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::DigestInvalid,
                "the final PUT of an upload needs ?digest=<algorithm:hex> of the whole blob",
            )
        })
        .and_then(parse_digest)?;
    session(&ctx, name, id).await?;
    if let Some(msg) = does_not_fit(&ctx) {
        return Err(out_of_space(&ctx, name, id, msg).await);
    }
    let has_body = content_length(&ctx).is_some_and(|n| n > 0)
        || ctx.headers.contains_key(header::TRANSFER_ENCODING);
    let body = has_body.then(|| body_stream(body));
    commit(&ctx, name, id, body, &digest).await
}

/// Append an optional last chunk, verify against `digest`, commit and link the blob.
async fn commit(
    ctx: &Ctx,
    name: &str,
    id: &str,
    body: Option<ByteStream>,
    digest: &Digest,
) -> ApiResult<Response> {
    let state = &ctx.state;
    if let Some(body) = body {
        // A failed body keeps what arrived consistently; the client may retry the rest.
        match state
            .blobs
            .append(id, None, body, state.limits.max_blob_bytes)
            .await
        {
            Ok(_) => {}
            Err(berth_storage::StorageError::Full(msg)) => {
                return Err(out_of_space(ctx, name, id, msg).await);
            }
            Err(e) => return Err(refused(ctx, e.into())),
        }
    }
    // Quota, then pin the digest so the collector cannot take the blob between the
    // commit (which may find it already stored) and the link.
    let size = state.blobs.upload_state(id).await?.size;
    state
        .lifecycle
        .before_commit(name, id, digest, size)
        .await
        .inspect_err(|e| crate::webhooks::quota_refused(ctx, name, Some(digest), e))?;
    match state.blobs.finish_upload(id, digest).await {
        Ok(size) => {
            state.meta.link_blob(name, digest, size).await?;
            state.meta.delete_upload(id).await?;
            Ok(created(name, digest))
        }
        Err(e @ berth_storage::StorageError::DigestMismatch { .. }) => {
            // The store already discarded the bytes; forget the session too.
            state.meta.delete_upload(id).await?;
            Err(e.into())
        }
        Err(e) => Err(refused(ctx, e.into())),
    }
}

pub(crate) async fn cancel(ctx: Ctx, name: &str, id: &str) -> ApiResult<Response> {
    session(&ctx, name, id).await?;
    ctx.state.blobs.cancel_upload(id).await?;
    ctx.state.meta.delete_upload(id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}
