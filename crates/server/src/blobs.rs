//! `GET/HEAD/DELETE /v2/<name>/blobs/<digest>`: reading blobs, with `Range`.
//!
//! A blob is served from a repository only if that repository links it (it was uploaded
//! or mounted there, or a manifest there references it), as in CNCF Distribution.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_proto::Digest;
use berth_proto::error::ErrorCode;
use berth_proto::range::{RangeError, parse_range};
use futures_util::StreamExt;

use crate::error::{ApiError, ApiResult};
use crate::routes::Ctx;

/// Chunks read ahead of what the connection has sent: the next chunk is read (or mapped)
/// while the previous one is encrypted and sent, with at most this many chunks (plus the
/// one being read) held per download.
const READ_AHEAD: usize = 2;

/// Parse a digest from a path or query, mapping errors to `DIGEST_INVALID`.
pub(crate) fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

pub(crate) fn digest_header(d: &Digest) -> HeaderValue {
    HeaderValue::from_str(&d.to_string()).expect("digests are ASCII")
}

fn blob_unknown(name: &str, digest: &Digest) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not in repository {name}"),
    )
}

pub(crate) async fn get(ctx: Ctx, name: &str, digest: &str) -> ApiResult<Response> {
    if let Some(resp) = crate::proxy::blob(&ctx, name, digest).await? {
        return Ok(resp);
    }
    let digest = parse_digest(digest)?;
    let state = &ctx.state;
    let size = state
        .meta
        .blob_link(name, &digest)
        .await?
        .ok_or_else(|| blob_unknown(name, &digest))?;

    let range = match ctx.header("range") {
        Some(h) => Some(parse_range(h, size).map_err(|e| {
            let err = ApiError::new(
                ErrorCode::RangeInvalid,
                format!("{e}; the blob has {size} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE);
            match e {
                RangeError::Unsatisfiable => err.with_header(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
                ),
                _ => err,
            }
        })?),
        None => None,
    };

    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest_header(&digest))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CACHE_CONTROL, "max-age=31536000");
    let len = match range {
        Some((start, end)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            end - start + 1
        }
        None => size,
    };
    builder = builder.header(header::CONTENT_LENGTH, len);

    if ctx.is_head() {
        // HEAD never opens the file: the link's size is authoritative.
        return Ok(builder.body(Body::empty()).unwrap());
    }
    // A backend configured to redirect (S3 with `redirect = true`) hands the client a
    // short-lived pre-signed URL; the client sends its `Range` there itself.
    match state.blobs.redirect_url(&digest).await {
        Ok(Some(url)) => {
            return Ok(Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header("docker-content-digest", digest_header(&digest))
                .header(header::CONTENT_LENGTH, 0)
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::empty())
                .unwrap());
        }
        Ok(None) => {}
        Err(berth_storage::StorageError::BlobUnknown(_)) => {
            return Err(blob_unknown(name, &digest));
        }
        Err(e) => return Err(e.into()),
    }
    let blob = match state.blobs.open_chunks(&digest, range).await {
        Ok(r) => r,
        // Linked in metadata but bytes gone (e.g. deleted by an operator): say so plainly.
        Err(berth_storage::StorageError::BlobUnknown(_)) => {
            return Err(blob_unknown(name, &digest));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(builder.body(read_ahead(blob.chunks)).unwrap())
}

/// A body that streams `chunks` from a separate task, `READ_AHEAD` chunks ahead. When the
/// client goes away the body (and its receiver) is dropped and the task stops.
fn read_ahead(mut chunks: berth_storage::ByteStream) -> Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        while let Some(chunk) = chunks.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

pub(crate) async fn delete(ctx: Ctx, name: &str, digest: &str) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    // Only the link is removed: bytes shared with other repositories stay, and
    // unreferenced bytes are reclaimed by garbage collection, never under a reader.
    match ctx.state.meta.unlink_blob(name, &digest).await {
        Ok(_) => {
            let caller = &ctx.caller;
            let resource = format!("{name}@{digest}");
            ctx.state
                .auth
                .audit(&caller.actor(), "delete", &resource, caller.addr, "blob")
                .await;
            Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
        }
        Err(berth_storage::StorageError::NotFound(_)) => Err(blob_unknown(name, &digest)),
        Err(e) => Err(e.into()),
    }
}
