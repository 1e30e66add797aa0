//! The router. Every registry path under `/v2/` goes through one wildcard route and one
//! parser ([`berth_proto::route::parse_v2_path`]), because repository names contain `/`.
//! Handlers are called as `parse → storage → response`, errors via `?`.

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use berth_proto::error::ErrorCode;
use berth_proto::route::{RouteError, V2Route, parse_v2_path};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{blobs, listing, manifests, uploads};

/// What every handler receives: the parsed pieces of one request (the body, which is not
/// `Sync`, is passed separately to the handlers that read it).
pub(crate) struct Ctx {
    pub state: AppState,
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
    pub method: Method,
}

impl Ctx {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// The whole HTTP application for a given state.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(v2_dispatch))
        .route("/v2/", any(v2_dispatch))
        .route("/v2/{*rest}", any(v2_dispatch))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(log_and_tag))
        .with_state(state)
}

/// Adds `Docker-Distribution-API-Version` to every response and logs each request once.
async fn log_and_tag(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::info!(
        target: "berth::http",
        %method,
        path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
    );
    resp
}

async fn health(State(state): State<AppState>) -> Response {
    match state.meta.list_repositories(None, 1).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "metadata database unavailable\n",
            )
                .into_response()
        }
    }
}

async fn v2_dispatch(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rest = uri.path().strip_prefix("/v2").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let query = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let ctx = Ctx {
        state,
        headers,
        query,
        method,
    };
    match route(ctx, body, rest).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route(ctx: Ctx, body: Body, rest: &str) -> ApiResult<Response> {
    let route = parse_v2_path(rest).map_err(|e| match e {
        RouteError::InvalidName(e) => ApiError::new(
            ErrorCode::NameInvalid,
            format!("{e}; repository names are lowercase path components like library/nginx"),
        ),
        RouteError::NotFound => ApiError::new(
            ErrorCode::NameUnknown,
            format!("no registry endpoint at /v2/{rest}"),
        )
        .with_status(StatusCode::NOT_FOUND),
    })?;
    let m = ctx.method.clone();
    match (route, m) {
        (V2Route::Base, Method::GET | Method::HEAD) => Ok(base()),
        (V2Route::Catalog, Method::GET) => listing::catalog(ctx).await,
        (V2Route::Tags { name }, Method::GET) => listing::tags(ctx, &name).await,
        (V2Route::Referrers { name, digest }, Method::GET) => {
            listing::referrers(ctx, &name, &digest).await
        }
        (V2Route::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            manifests::get(ctx, &name, &reference).await
        }
        (V2Route::Manifest { name, reference }, Method::PUT) => {
            manifests::put(ctx, body, &name, &reference).await
        }
        (V2Route::Manifest { name, reference }, Method::DELETE) => {
            manifests::delete(ctx, &name, &reference).await
        }
        (V2Route::Blob { name, digest }, Method::GET | Method::HEAD) => {
            blobs::get(ctx, &name, &digest).await
        }
        (V2Route::Blob { name, digest }, Method::DELETE) => {
            blobs::delete(ctx, &name, &digest).await
        }
        (V2Route::UploadStart { name }, Method::POST) => uploads::start(ctx, body, &name).await,
        (V2Route::Upload { name, id }, Method::GET) => uploads::status(ctx, &name, &id).await,
        (V2Route::Upload { name, id }, Method::PATCH) => {
            uploads::patch(ctx, body, &name, &id).await
        }
        (V2Route::Upload { name, id }, Method::PUT) => uploads::finish(ctx, body, &name, &id).await,
        (V2Route::Upload { name, id }, Method::DELETE) => uploads::cancel(ctx, &name, &id).await,
        (_, method) => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported on /v2/{rest}"),
        )
        .with_status(StatusCode::METHOD_NOT_ALLOWED)),
    }
}

fn base() -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}
