//! `GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference>`.
//!
//! A manifest is accepted only when it parses, its digest matches a digest reference, and
//! every blob and child manifest it names is already in the repository. Manifests are
//! served byte for byte as pushed, with the media type they were pushed with.

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_proto::error::ErrorCode;
use berth_proto::manifest::parse_manifest;
use berth_proto::name::Reference;
use berth_proto::{Algorithm, Digest};
use berth_storage::{NewManifest, StorageError, WebhookEvent};

use crate::blobs::digest_header;
use crate::error::{ApiError, ApiResult};
use crate::routes::Ctx;

fn parse_reference(reference: &str) -> ApiResult<Reference> {
    reference.parse::<Reference>().map_err(|e| {
        let code = if e.is_digest_error() {
            ErrorCode::DigestInvalid
        } else {
            ErrorCode::TagInvalid
        };
        ApiError::new(code, e.to_string())
    })
}

fn manifest_unknown(name: &str, reference: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in repository {name}"),
    )
}

pub(crate) async fn get(ctx: Ctx, name: &str, reference: &str) -> ApiResult<Response> {
    if let Some(resp) = crate::proxy::manifest(&ctx, name, reference).await? {
        crate::webhooks::proxied_pull(&ctx, name, reference, &resp);
        return Ok(resp);
    }
    let meta = &ctx.state.meta;
    // A reference that cannot be a tag or digest names no manifest: 404, as the OCI
    // conformance suite expects for GET/HEAD (only a PUT is told the reference is invalid).
    let reference_parsed = match parse_reference(reference) {
        Ok(r) => r,
        Err(e) if e.code == ErrorCode::TagInvalid => {
            return Err(ApiError::new(
                ErrorCode::ManifestUnknown,
                format!(
                    "manifest {reference} is not in repository {name}: {}",
                    e.detail
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let record = match reference_parsed {
        Reference::Tag(tag) => meta.manifest_by_tag(name, &tag).await?,
        Reference::Digest(d) => meta.manifest_by_digest(name, &d).await?,
    }
    .ok_or_else(|| manifest_unknown(name, reference))?;

    let len = record.content.len();
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &record.media_type)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest_header(&record.digest))
        .header(header::ETAG, format!("\"{}\"", record.digest));
    let body = if ctx.is_head() {
        Body::empty()
    } else {
        // For retention ("pulled in the last D days"): memory only, flushed in batches.
        ctx.state.lifecycle.pulls.record(name, &record.digest);
        crate::webhooks::publish_manifest(
            &ctx,
            WebhookEvent::Pull,
            name,
            Some(&record.digest),
            reference,
        );
        Body::from(record.content)
    };
    Ok(builder.body(body).unwrap())
}

pub(crate) async fn put(ctx: Ctx, body: Body, name: &str, reference: &str) -> ApiResult<Response> {
    let reference = parse_reference(reference)?;
    let limit = ctx.state.limits.max_manifest_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::SizeInvalid,
            format!("manifest is larger than the {limit}-byte limit; split it or raise limits.max_manifest_bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    if ctx
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(too_large());
    }
    let bytes = to_bytes(body, limit).await.map_err(|_| too_large())?;
    let content_type = ctx.header("content-type").map(str::to_owned);
    let parsed = parse_manifest(content_type.as_deref(), &bytes).map_err(|e| {
        if e.is_size_error() {
            too_large()
        } else {
            ApiError::new(ErrorCode::ManifestInvalid, e.to_string())
        }
    })?;

    let (digest, tag) = match reference {
        Reference::Digest(claimed) => {
            let actual = Digest::of(claimed.algorithm(), &bytes);
            if actual != claimed {
                return Err(ApiError::new(
                    ErrorCode::DigestInvalid,
                    format!("manifest content has digest {actual}, not {claimed} named in the URL"),
                ));
            }
            (actual, None)
        }
        Reference::Tag(tag) => (Digest::of(Algorithm::Sha256, &bytes), Some(tag)),
    };

    let meta = &ctx.state.meta;
    let mut sizes = std::collections::HashMap::with_capacity(parsed.blobs.len());
    for blob in &parsed.blobs {
        match meta.blob_link(name, blob).await? {
            Some(size) => {
                sizes.insert(blob, size);
            }
            None => {
                return Err(ApiError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "blob {blob} referenced by the manifest is not in repository {name}; push it first"
                    ),
                ));
            }
        }
    }
    // A descriptor that lies about its blob's size would only fail at pull time, far from
    // the cause, in clients that check sizes.
    for d in &parsed.blob_descriptors {
        if let Some(&real) = sizes.get(&d.digest)
            && real != d.size
        {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "{} names blob {} with size {}, but that blob is {real} bytes; fix the descriptor's size",
                    d.path, d.digest, d.size
                ),
            ));
        }
    }
    for child in &parsed.children {
        if !meta.manifest_exists(name, child).await? {
            return Err(ApiError::new(
                ErrorCode::ManifestBlobUnknown,
                format!(
                    "manifest {child} referenced by the index is not in repository {name}; push it first"
                ),
            ));
        }
    }

    let subject = parsed.subject.clone();
    let lifecycle = &ctx.state.lifecycle;
    let limits = lifecycle.push_limits(name, tag.as_deref()).await?;
    let stored = lifecycle
        .store
        .put_manifest_checked(
            NewManifest {
                repository: name.to_string(),
                digest: digest.clone(),
                media_type: parsed.media_type,
                content: bytes.to_vec(),
                tag: tag.clone(),
                blobs: parsed.blobs,
                children: parsed.children,
                subject: parsed.subject,
                artifact_type: parsed.artifact_type,
                annotations_json: parsed.annotations_json,
            },
            &limits,
        )
        .await;
    match stored {
        Ok(()) => {}
        // Checked again inside the transaction: the collector may have just taken it.
        Err(StorageError::BlobUnknown(blob)) => {
            return Err(ApiError::new(
                ErrorCode::ManifestBlobUnknown,
                format!(
                    "blob {blob} referenced by the manifest is not in repository {name}; push it again"
                ),
            ));
        }
        Err(StorageError::NotFound(what)) => {
            return Err(ApiError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("{what} (referenced by the index) is not there; push it again"),
            ));
        }
        Err(e) => {
            crate::webhooks::quota_refused(&ctx, name, Some(&digest), &e);
            return Err(e.into());
        }
    }
    tracing::info!(repository = name, %digest, "manifest pushed");
    let resource = match &tag {
        Some(t) => format!("{name}:{t}@{digest}"),
        None => format!("{name}@{digest}"),
    };
    let caller = &ctx.caller;
    ctx.state
        .auth
        .audit(&caller.actor(), "push", &resource, caller.addr, "")
        .await;
    crate::replication::on_push(&ctx.state, caller, name, tag.as_deref(), subject.as_ref());
    crate::webhooks::publish_manifest(
        &ctx,
        WebhookEvent::Push,
        name,
        Some(&digest),
        tag.as_deref().unwrap_or(""),
    );

    let mut resp = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                HeaderValue::from_str(&format!("/v2/{name}/manifests/{digest}")).unwrap(),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest_header(&digest),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response();
    if let Some(subject) = subject {
        resp.headers_mut()
            .insert("oci-subject", digest_header(&subject));
    }
    Ok(resp)
}

pub(crate) async fn delete(ctx: Ctx, name: &str, reference: &str) -> ApiResult<Response> {
    let meta = &ctx.state.meta;
    let lifecycle = &ctx.state.lifecycle;
    let result = match parse_reference(reference)? {
        Reference::Digest(d) => {
            lifecycle.check_delete(name, None, Some(&d)).await?;
            meta.delete_manifest(name, &d).await
        }
        Reference::Tag(t) => {
            lifecycle.check_delete(name, Some(&t), None).await?;
            meta.delete_tag(name, &t).await
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(repository = name, reference, "manifest deleted");
            let caller = &ctx.caller;
            let resource = format!("{name}:{reference}");
            ctx.state
                .auth
                .audit(&caller.actor(), "delete", &resource, caller.addr, "")
                .await;
            crate::replication::on_delete(&ctx.state, caller, name, reference);
            crate::webhooks::publish_manifest(&ctx, WebhookEvent::Delete, name, None, reference);
            Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
        }
        Err(StorageError::NotFound(_)) => Err(manifest_unknown(name, reference)),
        Err(e) => Err(e.into()),
    }
}
