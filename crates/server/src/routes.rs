//! The router. Every registry path under `/v2/` goes through one wildcard route and one
//! parser ([`berth_proto::route::parse_v2_path`]), because repository names contain `/`.
//! Handlers are called as `parse → storage → response`, errors via `?`.

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use berth_auth::Action;
use berth_proto::error::ErrorCode;
use berth_proto::route::{RouteError, V2Route, parse_v2_path};

use crate::auth::{Caller, ChallengeCtx, ClientAddr};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{blobs, listing, manifests, token, uploads};

/// What every handler receives: the parsed pieces of one request (the body, which is not
/// `Sync`, is passed separately to the handlers that read it).
pub(crate) struct Ctx {
    pub state: AppState,
    /// Who is calling (already authorized for the route's action when a handler runs).
    pub caller: Caller,
    /// Realm for challenges issued by handlers.
    pub challenge: ChallengeCtx,
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
        .route("/readyz", get(ready))
        .route("/metrics", get(crate::ops::metrics_text))
        .route(
            "/service/token",
            get(token::get_token).post(token::post_token),
        )
        .merge(crate::api::router())
        .merge(crate::console::router())
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(log_and_tag))
        .layer(middleware::from_fn(crate::ops::observe))
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

/// Liveness: the process answers HTTP. It does not look at dependencies, so that an
/// outage of the shared database does not make an orchestrator restart every replica;
/// `/readyz` ([`crate::ops::readyz`]) is the check that follows the dependencies.
async fn health() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// `/readyz`: whether this instance can take pushes and pulls now (`/healthz` only says
/// the process is alive). Each check is one entry of [`readiness`]; 503 when any fails.
async fn ready(State(state): State<AppState>) -> Response {
    let checks = readiness(&state).await;
    let ok = checks.iter().all(|c| c.ok);
    let mut by_name = serde_json::Map::new();
    for c in checks {
        let mut entry = c.extra;
        entry.insert("ok".into(), c.ok.into());
        entry.insert("detail".into(), c.detail.into());
        by_name.insert(c.name.into(), entry.into());
    }
    let refusals: serde_json::Map<String, serde_json::Value> = state
        .refusals
        .snapshot()
        .into_iter()
        .map(|(kind, n)| (kind.to_string(), n.into()))
        .collect();
    let body = serde_json::json!({ "ready": ok, "checks": by_name, "refusals": refusals });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One readiness check: a name, whether it passed, and what was seen.
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// Figures shown with the check (e.g. free bytes).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Every readiness check, in order. A new backend (S3, PostgreSQL) adds its check here.
pub async fn readiness(state: &AppState) -> Vec<Check> {
    let mut checks = Vec::new();
    let timeout = crate::ops::CHECK_TIMEOUT;
    checks.push(
        match tokio::time::timeout(timeout, state.meta.upload("readyz-probe")).await {
            Ok(Ok(_)) => Check {
                name: "database",
                ok: true,
                detail: "metadata database answers".into(),
                extra: Default::default(),
            },
            Ok(Err(e)) => Check {
                name: "database",
                ok: false,
                detail: format!("metadata database unreachable: {e}"),
                extra: Default::default(),
            },
            Err(_) => Check {
                name: "database",
                ok: false,
                detail: format!(
                    "metadata database unreachable: no answer within {}s",
                    timeout.as_secs()
                ),
                extra: Default::default(),
            },
        },
    );
    // Dependencies registered by the backends in use (the S3 bucket).
    for (name, ok, detail) in state.ops.run_checks().await {
        checks.push(Check {
            name,
            ok,
            detail,
            extra: Default::default(),
        });
    }
    checks.push(match state.space.report() {
        Ok(space) => {
            let mut extra = serde_json::Map::new();
            extra.insert("free_bytes".into(), space.free.into());
            extra.insert("reserve_bytes".into(), space.reserve.into());
            extra.insert("total_bytes".into(), space.total.into());
            Check {
                name: "storage",
                // Below the reserve the registry still serves pulls and deletes, so it
                // stays ready; the detail says pushes are refused.
                ok: true,
                detail: if space.in_reserve() {
                    format!(
                        "free space {} is below the reserve of {}: new uploads are refused",
                        crate::limits::human_bytes(space.free),
                        crate::limits::human_bytes(space.reserve)
                    )
                } else {
                    format!(
                        "{} free, {} reserve",
                        crate::limits::human_bytes(space.free),
                        crate::limits::human_bytes(space.reserve)
                    )
                },
                extra,
            }
        }
        Err(e) => Check {
            name: "storage",
            ok: false,
            detail: format!("cannot read the data directory's free space: {e}"),
            extra: Default::default(),
        },
    });
    checks
}

async fn v2_dispatch(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
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
    let challenge = ChallengeCtx {
        realm: state
            .auth
            .realm(&headers, uri.authority().map(|a| a.as_str())),
    };
    let caller = match state.auth.caller(&headers, addr).await {
        Ok(c) => c,
        Err(e) => return with_challenge(&state, &challenge, e).into_response(),
    };
    let ctx = Ctx {
        state,
        caller,
        challenge,
        headers,
        query,
        method,
    };
    match route(ctx, body, rest).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Every 401 carries a challenge, so that clients know where to get a token.
fn with_challenge(state: &AppState, ctx: &ChallengeCtx, e: ApiError) -> ApiError {
    if e.code == ErrorCode::Unauthorized
        && !e.headers.iter().any(|(n, _)| n == header::WWW_AUTHENTICATE)
    {
        let detail = e.detail.clone();
        return state.auth.unauthorized(
            ctx,
            &[],
            detail,
            Some(berth_auth::ChallengeError::InvalidToken),
        );
    }
    e
}

/// Check the caller may perform the route's action before any handler runs.
pub(crate) async fn authorize(ctx: &Ctx, route: &V2Route, method: &Method) -> ApiResult<()> {
    let auth = &ctx.state.auth;
    let (name, action) = match (route, method) {
        (V2Route::Base, _) => {
            return auth.require_authenticated(&ctx.caller, &ctx.challenge);
        }
        (V2Route::Catalog, _) => {
            if ctx.caller.principal.is_anonymous() && ctx.caller.token.is_none() {
                return Err(auth.unauthorized(
                    &ctx.challenge,
                    &[berth_auth::Scope::catalog()],
                    "authentication required to list repositories; log in (docker login / berth login)".into(),
                    None,
                ));
            }
            return Ok(());
        }
        (V2Route::Manifest { name, .. } | V2Route::Blob { name, .. }, &Method::DELETE) => {
            (name, Action::Delete)
        }
        (V2Route::Manifest { name, .. }, &Method::PUT)
        | (V2Route::UploadStart { name } | V2Route::Upload { name, .. }, _) => (name, Action::Push),
        (
            V2Route::Tags { name }
            | V2Route::Manifest { name, .. }
            | V2Route::Blob { name, .. }
            | V2Route::Referrers { name, .. },
            _,
        ) => (name, Action::Pull),
    };
    if action == Action::Push {
        ensure_project(ctx, name).await?;
    }
    auth.require(&ctx.caller, name, action, &ctx.challenge)
        .await?;
    if action != Action::Pull {
        crate::proxy::refuse_writes(&ctx.state, name).await?;
    }
    Ok(())
}

/// Pushing into a project that does not exist is refused (or the project is created when
/// the server is configured to auto-create). Anonymous callers learn nothing from this.
async fn ensure_project(ctx: &Ctx, repository: &str) -> ApiResult<()> {
    let auth = &ctx.state.auth;
    if ctx.caller.principal.is_anonymous() {
        return Ok(());
    }
    let project = berth_auth::project_of(repository);
    if auth.accounts.project(project).await?.is_some() {
        return Ok(());
    }
    if !ctx.state.auto_create_projects {
        return Err(ApiError::new(
            ErrorCode::NameUnknown,
            format!(
                "project {project:?} does not exist; create it first (berth project create {project}, or in the web console)"
            ),
        ));
    }
    match crate::admin::create_project(auth, &ctx.caller, project, false, "created on first push")
        .await
    {
        Ok(()) => Ok(()),
        // Clients push layers in parallel: another request may have just created it.
        Err(e) if auth.accounts.project(project).await?.is_some() => {
            tracing::debug!(project, error = %e.detail, "project created concurrently");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn route(ctx: Ctx, body: Body, rest: &str) -> ApiResult<Response> {
    let route = parse_v2_path(rest);
    // Anonymous callers are challenged before anything about the path is revealed.
    if route.is_err() {
        ctx.state
            .auth
            .require_authenticated(&ctx.caller, &ctx.challenge)?;
    }
    let route = route.map_err(|e| match e {
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
    if let Err(e) = authorize(&ctx, &route, &m).await {
        return Err(with_challenge(&ctx.state, &ctx.challenge, e));
    }
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
