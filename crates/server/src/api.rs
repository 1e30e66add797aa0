//! The JSON admin API under `/api/v1/`, described by the OpenAPI 3.1 document
//! `openapi.json` served at `GET /api/v1/openapi.json`.
//!
//! Handlers only parse and format: authenticate ([`ApiCaller`]: the same `Authorization`
//! header as the registry, Basic or a bearer token from `/service/token`), parse the
//! path, query and JSON body, call one operation of [`crate::admin`], and answer with JSON.
//! Errors are [`ApiError`]s in the registry's envelope (`{"errors":[{"code","message","detail"}]}`); a request without
//! credentials gets 401 with `WWW-Authenticate: Basic realm="berth"`.
//!
//! The routes are one table ([`table`]), so that a test can check them against the
//! OpenAPI document in both directions.

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, patch, post, put};
use berth_proto::error::ErrorCode;
use berth_storage::AuditFilter;

use crate::remotes::{self, RegistrySpec};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::admin;
use crate::auth::{Caller, ClientAddr};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Largest JSON request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// The realm of the API's Basic challenge.
const REALM: &str = "berth";

/// Every route of the API: method, path (axum syntax, which is also OpenAPI's), handler.
pub fn table() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/api/v1/openapi.json", get(openapi)),
        (Method::GET, "/api/v1/me", get(me)),
        (Method::GET, "/api/v1/projects", get(list_projects)),
        (Method::POST, "/api/v1/projects", post(create_project)),
        (Method::GET, "/api/v1/projects/{name}", get(get_project)),
        (
            Method::PATCH,
            "/api/v1/projects/{name}",
            patch(update_project),
        ),
        (
            Method::DELETE,
            "/api/v1/projects/{name}",
            delete(delete_project),
        ),
        (
            Method::GET,
            "/api/v1/projects/{name}/members",
            get(list_members),
        ),
        (
            Method::PUT,
            "/api/v1/projects/{name}/members/{user}",
            put(set_member),
        ),
        (
            Method::DELETE,
            "/api/v1/projects/{name}/members/{user}",
            delete(remove_member),
        ),
        (
            Method::GET,
            "/api/v1/projects/{name}/robots",
            get(list_robots),
        ),
        (
            Method::POST,
            "/api/v1/projects/{name}/robots",
            post(create_robot),
        ),
        (
            Method::DELETE,
            "/api/v1/projects/{name}/robots/{robot}",
            delete(revoke_robot),
        ),
        (Method::GET, "/api/v1/users", get(list_users)),
        (Method::POST, "/api/v1/users", post(add_user)),
        (Method::PATCH, "/api/v1/users/{name}", patch(update_user)),
        (Method::DELETE, "/api/v1/users/{name}", delete(delete_user)),
        (Method::GET, "/api/v1/audit", get(audit)),
        (Method::GET, "/api/v1/gc", get(gc_runs)),
        (Method::POST, "/api/v1/gc", post(gc_run)),
        (
            Method::GET,
            "/api/v1/projects/{name}/policy",
            get(project_policy),
        ),
        (
            Method::PATCH,
            "/api/v1/projects/{name}/policy",
            patch(set_project_policy),
        ),
        (
            Method::POST,
            "/api/v1/projects/{name}/retention",
            post(run_retention),
        ),
        (
            Method::POST,
            "/api/v1/projects/{name}/purge",
            post(purge_project),
        ),
        (Method::GET, "/api/v1/registries", get(list_registries)),
        (Method::POST, "/api/v1/registries", post(add_registry)),
        (Method::GET, "/api/v1/registries/{name}", get(get_registry)),
        (
            Method::PATCH,
            "/api/v1/registries/{name}",
            patch(update_registry),
        ),
        (
            Method::DELETE,
            "/api/v1/registries/{name}",
            delete(delete_registry),
        ),
        (
            Method::POST,
            "/api/v1/registries/{name}/check",
            post(check_registry),
        ),
    ]
    .into_iter()
    .chain(crate::replication::api::routes())
    .chain(crate::webhooks::http::routes())
    .collect()
}

/// The API router (merged into [`crate::app`]). Unknown paths under `/api/` answer a JSON 404.
pub fn router() -> Router<AppState> {
    table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        .route("/api/{*rest}", any(unknown))
}

async fn unknown(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NameUnknown,
        format!(
            "no admin API endpoint at {}; see /api/v1/openapi.json",
            uri.path()
        ),
    )
    .with_status(StatusCode::NOT_FOUND)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.to_string(),
    )
        .into_response()
}

/// A 401 with the API's Basic challenge.
fn challenge(e: ApiError) -> ApiError {
    e.with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&berth_auth::basic_challenge(REALM)).expect("static realm"),
    )
}

/// The authenticated caller of an API request; anonymous requests are refused with 401.
pub struct ApiCaller(pub Caller);

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Ok(ClientAddr(addr)) = ClientAddr::from_request_parts(parts, state).await;
        match state.auth.caller(&parts.headers, addr).await {
            Ok(c) if c.principal.is_anonymous() => Err(challenge(ApiError::new(
                ErrorCode::Unauthorized,
                "the admin API needs credentials: Basic (user or robot) or a bearer token from /service/token",
            ))),
            Ok(c) => Ok(ApiCaller(c)),
            Err(e) if e.code == ErrorCode::Unauthorized => Err(challenge(e)),
            Err(e) => Err(e),
        }
    }
}

/// A JSON request body (at most 64 KiB); malformed bodies answer 400 in the API's format.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                admin::bad_request(format!(
                    "request body unreadable or over {MAX_BODY} bytes: {e}"
                ))
            })?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| admin::bad_request(format!("invalid JSON body: {e}")))
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(value).expect("serializable"),
    )
        .into_response()
}

fn ok<T: serde::Serialize>(value: &T) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, value))
}

fn no_content() -> ApiResult<Response> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn query<T: DeserializeOwned>(uri: &Uri) -> ApiResult<T> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| admin::bad_request(format!("invalid query: {}", e.body_text())))
}

// ---------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectCreate {
    name: String,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    description: String,
    /// Make it a proxy cache of this registered registry.
    #[serde(default)]
    proxy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectUpdate {
    public: Option<bool>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSet {
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotCreate {
    name: String,
    #[serde(default)]
    push: bool,
    expires_in_days: Option<u32>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserCreate {
    name: String,
    password: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    password: Option<String>,
    admin: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotDeleteQuery {
    #[serde(default)]
    purge: bool,
}

/// `GET /api/v1/audit` parameters.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Resource prefix.
    pub resource: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
    /// Events with ids below this (the next page).
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

impl AuditQuery {
    pub fn filter(self) -> AuditFilter {
        AuditFilter {
            actor: self.actor.filter(|s| !s.is_empty()),
            action: self.action.filter(|s| !s.is_empty()),
            resource_prefix: self.resource.filter(|s| !s.is_empty()),
            since: self.since,
            until: self.until,
            before_id: self.before,
            limit: self
                .limit
                .unwrap_or(AuditFilter::DEFAULT_LIMIT)
                .min(AuditFilter::MAX_LIMIT),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

async fn me(State(s): State<AppState>, ApiCaller(c): ApiCaller) -> ApiResult<Response> {
    ok(&admin::me(&s.auth, &c).await?)
}

async fn list_projects(State(s): State<AppState>, ApiCaller(c): ApiCaller) -> ApiResult<Response> {
    ok(&admin::list_projects(&s.auth, &c).await?)
}

async fn create_project(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    JsonBody(b): JsonBody<ProjectCreate>,
) -> ApiResult<Response> {
    let Some(registry) = &b.proxy else {
        admin::create_project(&s.auth, &c, &b.name, b.public, &b.description).await?;
        let p = admin::get_project(&s.auth, &c, &b.name).await?;
        return Ok(json(StatusCode::CREATED, &p));
    };
    crate::proxy::create_proxy_project(
        &s.auth,
        &s.remotes,
        &c,
        &b.name,
        b.public,
        &b.description,
        registry,
    )
    .await?;
    s.proxy.forget(&b.name);
    let p = admin::get_project(&s.auth, &c, &b.name).await?;
    let mut v = serde_json::to_value(&p).unwrap_or_default();
    v["proxy"] = registry.clone().into();
    Ok(json(StatusCode::CREATED, &v))
}

async fn get_project(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ok(&admin::get_project(&s.auth, &c, &name).await?)
}

async fn update_project(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<ProjectUpdate>,
) -> ApiResult<Response> {
    ok(&admin::update_project(&s.auth, &c, &name, b.public, b.description).await?)
}

async fn delete_project(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    admin::delete_project(&s.auth, &c, &name).await?;
    no_content()
}

async fn list_members(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ok(&admin::list_members(&s.auth, &c, &name).await?)
}

async fn set_member(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path((name, user)): Path<(String, String)>,
    JsonBody(b): JsonBody<MemberSet>,
) -> ApiResult<Response> {
    let role = admin::parse_role(&b.role)?;
    ok(&admin::set_member(&s.auth, &c, &name, &user, role).await?)
}

async fn remove_member(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<Response> {
    admin::remove_member(&s.auth, &c, &name, &user).await?;
    no_content()
}

async fn list_robots(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ok(&admin::list_robots(&s.auth, &c, &name).await?)
}

async fn create_robot(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<RobotCreate>,
) -> ApiResult<Response> {
    let r = admin::create_robot(
        &s.auth,
        &c,
        &name,
        &b.name,
        b.push,
        b.expires_in_days,
        &b.description,
    )
    .await?;
    let mut resp = json(StatusCode::CREATED, &r);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn revoke_robot(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path((name, robot)): Path<(String, String)>,
    uri: Uri,
) -> ApiResult<Response> {
    let q: RobotDeleteQuery = query(&uri)?;
    if q.purge {
        admin::delete_robot(&s.auth, &c, Some(&name), &robot).await?;
        return no_content();
    }
    ok(&admin::revoke_robot(&s.auth, &c, Some(&name), &robot).await?)
}

async fn list_users(State(s): State<AppState>, ApiCaller(c): ApiCaller) -> ApiResult<Response> {
    ok(&admin::list_users(&s.auth, &c).await?)
}

async fn add_user(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    JsonBody(b): JsonBody<UserCreate>,
) -> ApiResult<Response> {
    let u = admin::add_user(&s.auth, &c, &b.name, b.password, b.admin).await?;
    let mut resp = json(StatusCode::CREATED, &u);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn update_user(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<UserUpdate>,
) -> ApiResult<Response> {
    ok(&admin::update_user(&s.auth, &c, &name, b.password, b.admin).await?)
}

async fn delete_user(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    admin::delete_user(&s.auth, &c, &name).await?;
    no_content()
}

async fn audit(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    uri: Uri,
) -> ApiResult<Response> {
    let q: AuditQuery = query(&uri)?;
    ok(&admin::audit_log(&s.auth, &c, &q.filter()).await?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<u32>,
}

async fn gc_runs(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    uri: Uri,
) -> ApiResult<Response> {
    let q: RunsQuery = query(&uri)?;
    ok(&crate::gc::ops::runs(&s, &c, q.limit.unwrap_or(50)).await?)
}

async fn gc_run(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    JsonBody(b): JsonBody<RunRequest>,
) -> ApiResult<Response> {
    ok(&crate::gc::ops::run_gc(&s, &c, b.dry_run, "api").await?)
}

async fn project_policy(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ok(&crate::gc::ops::policy(&s, &c, &name).await?)
}

async fn set_project_policy(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<crate::gc::ops::PolicyUpdate>,
) -> ApiResult<Response> {
    ok(&crate::gc::ops::set_policy(&s, &c, &name, b).await?)
}

async fn run_retention(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<RunRequest>,
) -> ApiResult<Response> {
    ok(&crate::gc::ops::run_retention(&s, &c, &name, b.dry_run).await?)
}

async fn purge_project(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let n = crate::gc::ops::purge_project(&s, &c, &name).await?;
    ok(&serde_json::json!({ "repositories_deleted": n }))
}

async fn list_registries(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
) -> ApiResult<Response> {
    ok(&remotes::list_registries(&s.remotes, &c).await?)
}

async fn add_registry(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    JsonBody(b): JsonBody<RegistrySpec>,
) -> ApiResult<Response> {
    let r = remotes::add_registry(&s.auth, &s.remotes, &c, b).await?;
    Ok(json(StatusCode::CREATED, &r))
}

async fn get_registry(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ok(&remotes::get_registry(&s.remotes, &c, &name).await?)
}

async fn update_registry(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<RegistrySpec>,
) -> ApiResult<Response> {
    ok(&remotes::update_registry(&s.auth, &s.remotes, &c, &name, b).await?)
}

async fn delete_registry(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    remotes::delete_registry(&s.auth, &s.remotes, &c, &name).await?;
    no_content()
}

async fn check_registry(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ok(&remotes::check_registry(&s.auth, &s.remotes, &c, &name).await?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::http::Request;
    use berth_auth::{SigningKey, TokenConfig, TokenService};
    use berth_storage::fs::FsBlobStore;
    use berth_storage::sqlite::SqliteMetadata;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::Auth;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    fn doc() -> serde_json::Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = doc();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    fn routed() -> BTreeSet<(String, String)> {
        table()
            .into_iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let (doc, routes) = (documented(), routed());
        let undocumented: Vec<_> = routes.difference(&doc).collect();
        let unrouted: Vec<_> = doc.difference(&routes).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
        assert_eq!(routes.len(), table().len(), "a route is listed twice");
    }

    #[test]
    fn document_is_openapi_3_1_and_references_resolve() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let text = OPENAPI;
        for part in text.split("\"$ref\": \"#/").skip(1) {
            let target = &part[..part.find('"').unwrap()];
            let mut node = &doc;
            for seg in target.split('/') {
                node = node
                    .get(seg)
                    .unwrap_or_else(|| panic!("dangling $ref #/{target}"));
            }
        }
        // Every path parameter is declared.
        for (path, item) in doc["paths"].as_object().unwrap() {
            let names: BTreeSet<&str> = path
                .split('{')
                .skip(1)
                .map(|s| &s[..s.find('}').unwrap()])
                .collect();
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                assert!(op["operationId"].is_string(), "{m} {path}: operationId");
                let declared: BTreeSet<&str> = item["parameters"]
                    .as_array()
                    .into_iter()
                    .chain(op["parameters"].as_array())
                    .flatten()
                    .filter_map(|p| {
                        let p = match p.get("$ref") {
                            Some(r) => {
                                let name = r.as_str().unwrap().rsplit('/').next().unwrap();
                                &doc["components"]["parameters"][name]
                            }
                            None => p,
                        };
                        (p["in"] == "path").then(|| p["name"].as_str().unwrap())
                    })
                    .collect();
                assert_eq!(declared, names, "{m} {path}: path parameters");
            }
        }
    }

    async fn state() -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMetadata::open(&dir.path().join("metadata.db"))
            .await
            .unwrap();
        let blobs = FsBlobStore::open(dir.path().to_path_buf()).await.unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("key.pem")).unwrap();
        let auth = Auth::new(
            Arc::new(meta.clone()),
            TokenService::new(key, TokenConfig::new("berth", "berth")),
            None,
            false,
            "https",
        );
        admin::bootstrap(&auth, Some("admin-password-1"))
            .await
            .unwrap();
        let blobs: Arc<dyn berth_storage::BlobStore> = Arc::new(blobs);
        let lifecycle = Arc::new(crate::gc::Lifecycle::new(
            Arc::new(meta.clone()),
            Arc::new(meta.clone()),
            blobs.clone(),
            Default::default(),
            std::time::Duration::from_secs(3600),
        ));
        let meta_for_hooks = meta.clone();
        let remote_store = meta.clone();
        let state = AppState {
            blobs,
            replication: Arc::new(crate::replication::Replication::new(Arc::new(meta.clone()))),
            meta: Arc::new(meta),
            auth: Arc::new(auth),
            limits: Default::default(),
            auto_create_projects: false,
            tls: Default::default(),
            lifecycle,
            refusals: Default::default(),
            space: crate::limits::DiskSpace::new(dir.path().to_owned(), Default::default()),
            ops: Default::default(),
            webhooks: Arc::new(crate::webhooks::Webhooks::new(
                Arc::new(meta_for_hooks.clone()),
                Arc::new(meta_for_hooks),
                Arc::new(crate::remotes::Sealer::from_key(&[3; 32]).expect("key")),
                Default::default(),
            )),
            proxy: Arc::new(crate::proxy::Proxy::new(dir.path().join("proxy"))),
            remotes: Arc::new(crate::remotes::Remotes::new(
                Arc::new(remote_store),
                Arc::new(crate::remotes::Sealer::from_key(&[3; 32]).expect("key")),
            )),
        };
        (state, dir)
    }

    fn concrete(path: &str) -> String {
        path.replace("{name}", "library")
            .replace("{user}", "admin")
            .replace("{robot}", "ci")
            .replace("{id}", "1")
            .replace("{webhook}", "ci")
    }

    /// The router answers every documented operation (401 without credentials, from the
    /// handler's extractor) and 405 for every other method on a documented path.
    #[tokio::test]
    async fn router_serves_exactly_the_documented_operations() {
        let (state, _dir) = state().await;
        let app = crate::app(state);
        let doc = documented();
        let paths: BTreeSet<&String> = doc.iter().map(|(_, p)| p).collect();
        for path in paths {
            for m in METHODS {
                let method = m.to_uppercase();
                let req = Request::builder()
                    .method(method.as_str())
                    .uri(concrete(path))
                    .body(Body::empty())
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                let status = resp.status();
                if doc.contains(&(method.clone(), path.clone())) {
                    if path == "/api/v1/openapi.json" {
                        assert_eq!(status, StatusCode::OK);
                        continue;
                    }
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                    assert_eq!(
                        resp.headers()[header::WWW_AUTHENTICATE],
                        "Basic realm=\"berth\""
                    );
                    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                }
            }
        }
        let req = Request::get("/api/v1/nope").body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn audit_query_maps_to_a_filter() {
        let uri: Uri =
            "/api/v1/audit?actor=bob&action=&resource=project:x&since=5&before=9&limit=5000"
                .parse()
                .unwrap();
        let f = query::<AuditQuery>(&uri).unwrap().filter();
        assert_eq!(f.actor.as_deref(), Some("bob"));
        assert_eq!(f.action, None);
        assert_eq!(f.resource_prefix.as_deref(), Some("project:x"));
        assert_eq!((f.since, f.until, f.before_id), (Some(5), None, Some(9)));
        assert_eq!(f.limit, AuditFilter::MAX_LIMIT);
        assert_eq!(
            query::<AuditQuery>(&"/x".parse().unwrap())
                .unwrap()
                .filter()
                .limit,
            AuditFilter::DEFAULT_LIMIT
        );
        let bad = query::<AuditQuery>(&"/x?limit=lots".parse().unwrap()).unwrap_err();
        assert_eq!(bad.status, Some(StatusCode::BAD_REQUEST));
        assert!(query::<AuditQuery>(&"/x?actr=bob".parse().unwrap()).is_err());
    }
}
