//! The web console: server-rendered HTML pages at `/` on the registry's own port.
//!
//! Layering: routes (here) → page handlers ([`pages`], [`repository`], [`manage`]) →
//! the same operations the JSON API and the CLI use ([`crate::admin`]) and the same
//! authorization the registry uses ([`crate::auth::Auth::actions`], and for deletions
//! [`crate::routes::authorize`] with the registry's own delete handler). Nothing here
//! decides who may do what.
//!
//! - Sessions ([`session`]): a random id in an `HttpOnly; Secure; SameSite=Strict`
//!   cookie, stored as its SHA-256 in the account store with an expiry, so that sessions
//!   survive restarts and are ended server-side on sign-out or a password change.
//! - CSRF: every state-changing form carries a token derived from the session id (the
//!   sign-in form: a double-submit cookie); a POST without it is refused with 403.
//! - Templates are askama (compiled into the binary, HTML auto-escaping on every value);
//!   CSS and the one small script are embedded; pages carry a Content-Security-Policy
//!   that allows no inline script.

mod lifecycle;
mod manage;
mod pages;
mod registries;
mod replication;
mod repository;
mod session;
mod view;
mod webhooks;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_proto::error::ErrorCode;

use crate::error::ApiError;
use crate::state::{AppState, TlsInfo};

pub(crate) use session::Viewer;

/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

const CSS: &str = include_str!("../../static/console.css");
const JS: &str = include_str!("../../static/console.js");

/// Security headers on every console response.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (merged into [`crate::app`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route(
            "/projects",
            get(pages::projects).post(manage::create_project),
        )
        .route("/projects/{name}", get(pages::project))
        .route("/projects/{name}/settings", post(manage::update_project))
        .route("/projects/{name}/delete", post(manage::delete_project))
        .route("/projects/{name}/members", post(manage::set_member))
        .route(
            "/projects/{name}/members/remove",
            post(manage::remove_member),
        )
        .route("/projects/{name}/robots", post(manage::create_robot))
        .route("/projects/{name}/robots/revoke", post(manage::revoke_robot))
        .route(
            "/repositories/{*rest}",
            get(repository::page).post(repository::action),
        )
        .route("/search", get(repository::search))
        .route("/admin", get(pages::admin_home))
        .route("/admin/users", get(manage::users).post(manage::add_user))
        .route("/admin/users/password", post(manage::reset_password))
        .route("/admin/users/admin", post(manage::set_admin))
        .route("/admin/users/delete", post(manage::delete_user))
        .route("/admin/audit", get(manage::audit))
        .route("/admin/certificate", get(manage::certificate))
        .route(
            "/admin/registries",
            get(registries::list).post(registries::add),
        )
        .route("/admin/registries/check", post(registries::check))
        .route("/admin/registries/delete", post(registries::delete))
        .route("/admin/gc", get(lifecycle::gc_page).post(lifecycle::gc_run))
        .route(
            "/projects/{name}/policy",
            get(lifecycle::policy_page).post(lifecycle::save_policy),
        )
        .route("/projects/{name}/retention", post(lifecycle::run_retention))
        .route("/admin/replication", get(replication::page))
        .route("/admin/replication/run", post(replication::run))
        .route("/admin/replication/stop", post(replication::stop))
        .route(
            "/admin/replication/executions/{id}",
            get(replication::execution),
        )
        .route(
            "/projects/{name}/webhooks",
            get(webhooks::page).post(webhooks::add),
        )
        .route("/projects/{name}/webhooks/action", post(webhooks::action))
        .route("/ca.crt", get(ca_crt))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
}

/// CSP, framing, sniffing and referrer rules on every console response; HTML is never
/// cached; a flash message shown on this page is cleared.
async fn security_headers(req: Request, next: Next) -> Response {
    let had_flash = session::cookie(req.headers(), session::FLASH_COOKIE).is_some();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    let is_html = h
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_html {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let sets_flash = h
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(session::FLASH_COOKIE.as_bytes()));
    if had_flash && is_html && !sets_flash {
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("berth_flash=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        );
    }
    resp
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", JS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ca.crt`: the CA Berth made, for anyone to download (a CA certificate is public).
async fn ca_crt(State(state): State<AppState>, viewer: Viewer) -> Response {
    let message = match &state.tls {
        TlsInfo::OwnCa { ca_crt } => match tokio::fs::read(ca_crt).await {
            Ok(pem) => {
                return (
                    [
                        (header::CONTENT_TYPE, "application/x-x509-ca-cert"),
                        (
                            header::CONTENT_DISPOSITION,
                            "attachment; filename=\"berth-ca.crt\"",
                        ),
                    ],
                    pem,
                )
                    .into_response();
            }
            Err(e) => {
                tracing::error!(path = %ca_crt.display(), error = %e, "cannot read ca.crt");
                return PageError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the CA certificate file of this server cannot be read; see the server log",
                )
                .page(&viewer);
            }
        },
        TlsInfo::Operator { .. } => {
            "this server presents a certificate its operator supplied (--tls-cert); Berth did not make it and does not know which CA issued it: ask the operator for that CA certificate"
        }
        TlsInfo::PlainHttp => {
            "this server speaks plain HTTP behind a TLS-terminating proxy; the proxy's certificate is what clients must trust: ask the operator for its CA"
        }
    };
    PageError::new(StatusCode::NOT_FOUND, message).page(&viewer)
}

async fn not_found(viewer: Viewer, uri: axum::http::Uri) -> Response {
    PageError::new(
        StatusCode::NOT_FOUND,
        format!("there is no page at {}", uri.path()),
    )
    .page(&viewer)
}

/// What every page shows around its content.
pub(crate) struct Layout {
    pub title: String,
    /// The signed-in user.
    pub user: Option<String>,
    pub admin: bool,
    /// This session's CSRF token (empty when signed out).
    pub csrf: String,
    pub flash: Option<String>,
    pub error: Option<String>,
    /// The search box's text.
    pub q: String,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    l: Layout,
    status: u16,
    reason: &'a str,
}

/// An error shown as a page: the status and a message saying what was wrong and what to do.
#[derive(Debug)]
pub(crate) struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    /// Render for `viewer` (their navigation bar around it).
    pub fn page(self, viewer: &Viewer) -> Response {
        let mut l = viewer.layout("Error");
        l.flash = None;
        l.error = Some(self.message);
        let page = ErrorPage {
            l,
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
        };
        render(self.status, &page)
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        if e.internal {
            tracing::error!(detail = %e.detail, "console request failed");
            return PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server could not complete this request; see the server log",
            );
        }
        let status = e.status.unwrap_or_else(|| {
            StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST)
        });
        if e.code == ErrorCode::Unauthorized {
            let message = if e.detail.contains("invalid username or password") {
                e.detail
            } else {
                "you are not signed in: sign in and try again".to_string()
            };
            return PageError::new(StatusCode::UNAUTHORIZED, message);
        }
        PageError::new(status, e.detail)
    }
}

impl From<berth_storage::StorageError> for PageError {
    fn from(e: berth_storage::StorageError) -> Self {
        PageError::from(ApiError::from(e))
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// Turn a handler's result into a response (errors as pages for `viewer`).
pub(crate) fn respond(viewer: &Viewer, result: PageResult) -> Response {
    result.unwrap_or_else(|e| e.page(viewer))
}

/// Render a template as an HTML response.
pub(crate) fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered; see the server log\n",
            )
                .into_response()
        }
    }
}

/// The fields of a urlencoded form body (at most [`MAX_FORM_BYTES`]).
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub async fn read(body: Body) -> Result<Form, PageError> {
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                PageError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the form is larger than {MAX_FORM_BYTES} bytes"),
                )
            })?;
        let fields = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                format!("the form could not be read ({e}); reload the page and try again"),
            )
        })?;
        Ok(Form(fields))
    }

    /// The field's value ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// A checkbox: present and not "false"/"off".
    pub fn checked(&self, key: &str) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k == key && !matches!(v.as_str(), "" | "false" | "off" | "0"))
    }
}
