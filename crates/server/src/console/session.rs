//! Console sessions, CSRF tokens, sign-in and sign-out.
//!
//! - The session id is a random secret (256 bits) in the `berth_session` cookie; the
//!   account store keeps only its SHA-256, the user and the expiry.
//! - The CSRF token of a session is derived from its id (SHA-256 with a fixed prefix), so
//!   only someone who can read the cookie — the page itself, served to its owner — can
//!   know it; a cross-site form cannot.
//! - The sign-in form has no session yet: a random token in a cookie (`berth_login_csrf`,
//!   `SameSite=Strict`) must equal the hidden field (double submit).
//! - Robot accounts cannot sign in to the console (they are for clients).

use std::net::IpAddr;

use askama::Template;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_auth::Principal;
use berth_storage::ConsoleSession;
use sha2::{Digest as _, Sha256};

use super::{Form, Layout, PageError, render};
use crate::auth::{Caller, ClientAddr};
use crate::state::AppState;

pub(crate) const SESSION_COOKIE: &str = "berth_session";
pub(crate) const LOGIN_CSRF_COOKIE: &str = "berth_login_csrf";
pub(crate) const FLASH_COOKIE: &str = "berth_flash";
/// How long a console session lasts after sign-in.
pub(crate) const SESSION_SECS: i64 = 12 * 3600;

/// The value of cookie `name` in the request, if sent.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// What is stored for a session id.
pub(crate) fn session_hash(id: &str) -> String {
    sha256_hex(&["berth-console-session\n", id])
}

/// The CSRF token of the session with this id.
pub(crate) fn csrf_of(id: &str) -> String {
    sha256_hex(&["berth-console-csrf\n", id])
}

/// Equal without an early exit (tokens are compared to secrets).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A `Set-Cookie` value with the console's attributes.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    secure: bool,
) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly{secure}; SameSite=Strict")
}

/// A signed-in user's session.
pub(crate) struct SignedIn {
    pub name: String,
    pub admin: bool,
    pub csrf: String,
    id_hash: String,
}

/// Who is looking at a page: the [`Caller`] the registry's authorization takes, and the
/// console session if signed in.
pub(crate) struct Viewer {
    pub caller: Caller,
    pub session: Option<SignedIn>,
    pub flash: Option<String>,
    /// Cookies get `Secure` (the browser reached us over HTTPS).
    pub secure: bool,
    /// `host:port` the browser used (for pull commands and trust steps).
    pub host: String,
}

impl Viewer {
    pub fn layout(&self, title: impl Into<String>) -> Layout {
        Layout {
            title: title.into(),
            user: self.session.as_ref().map(|s| s.name.clone()),
            admin: self.session.as_ref().is_some_and(|s| s.admin),
            csrf: self
                .session
                .as_ref()
                .map(|s| s.csrf.clone())
                .unwrap_or_default(),
            flash: self.flash.clone(),
            error: None,
            q: String::new(),
        }
    }

    /// Refuse a state-changing form unless it carries this session's CSRF token.
    pub fn check_csrf(&self, form: &Form) -> Result<(), PageError> {
        match &self.session {
            Some(s) if same(form.get("csrf"), &s.csrf) => Ok(()),
            Some(_) => Err(csrf_refused()),
            None => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "the CSRF token of this form is missing or invalid because you are not signed in (or your session ended): sign in, reload the page and try again",
            )),
        }
    }

    /// `303 See Other` to `location`, with a message for the next page.
    pub fn redirect(&self, location: &str, flash: Option<&str>) -> Response {
        let mut resp = see_other(location);
        if let Some(text) = flash {
            let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
            let c = set_cookie(FLASH_COOKIE, &value, "/", 60, self.secure);
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        resp
    }
}

fn csrf_refused() -> PageError {
    PageError::new(
        StatusCode::FORBIDDEN,
        "the CSRF token of this form is missing or invalid (the page may be stale): reload the page and try again",
    )
}

pub(crate) fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/projects")),
        )],
    )
        .into_response()
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let ClientAddr(addr) = ClientAddr::from_request_parts(parts, state)
            .await
            .unwrap_or(ClientAddr(IpAddr::from([0, 0, 0, 0])));
        let base = state
            .auth
            .base_url(&parts.headers, parts.uri.authority().map(|a| a.as_str()));
        let secure = base.starts_with("https://");
        let host = base
            .split_once("://")
            .map_or(base.as_str(), |(_, h)| h)
            .to_string();
        let flash = cookie(&parts.headers, FLASH_COOKIE).and_then(|v| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        });
        let mut viewer = Viewer {
            caller: Caller::anonymous(addr),
            session: None,
            flash,
            secure,
            host,
        };
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE).filter(|v| !v.is_empty()) else {
            return Ok(viewer);
        };
        let id_hash = session_hash(id);
        let stored = match state.auth.accounts.session(&id_hash).await {
            Ok(s) => s,
            Err(e) => {
                return Err(PageError::from(e).page(&viewer));
            }
        };
        let Some(stored) = stored.filter(|s| s.expires_at > crate::admin::now()) else {
            return Ok(viewer);
        };
        // A deleted or disabled user is signed out, whatever the cookie says.
        let Ok(principal) = state.auth.caller_principal(&stored.username).await else {
            return Ok(viewer);
        };
        if let Principal::User { name, system_admin } = &principal {
            viewer.session = Some(SignedIn {
                name: name.clone(),
                admin: *system_admin,
                csrf: csrf_of(id),
                id_hash,
            });
            viewer.caller = Caller {
                principal,
                token: None,
                addr,
            };
        }
        Ok(viewer)
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    l: Layout,
    login_csrf: String,
    username: String,
    next: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct NextQuery {
    #[serde(default)]
    next: String,
}

/// A local path to return to after sign-in, or `/projects`.
fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control())
        && !next.starts_with("/login");
    if ok {
        next.to_string()
    } else {
        "/projects".to_string()
    }
}

fn login_page(
    viewer: &Viewer,
    status: StatusCode,
    username: &str,
    next: &str,
    error: Option<String>,
) -> Response {
    let token = berth_auth::generate_secret().unwrap_or_default();
    let mut l = viewer.layout("Sign in");
    l.error = error;
    let page = LoginPage {
        l,
        login_csrf: token.clone(),
        username: username.to_string(),
        next: safe_next(next),
    };
    let mut resp = render(status, &page);
    let c = set_cookie(LOGIN_CSRF_COOKIE, &token, "/login", 3600, viewer.secure);
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /login`
pub(crate) async fn login_form(viewer: Viewer, Query(q): Query<NextQuery>) -> Response {
    if viewer.session.is_some() {
        return see_other(&safe_next(&q.next));
    }
    login_page(&viewer, StatusCode::OK, "", &q.next, None)
}

/// `POST /login`: the registry's login (same rate limiter, same audit of failures), then
/// a new server-side session.
pub(crate) async fn login(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match Form::read(body).await {
        Ok(f) => f,
        Err(e) => return e.page(&viewer),
    };
    let username = form.get("username").trim();
    let next = form.get("next");
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !same(form.get("csrf"), expected) {
        return login_page(
            &viewer,
            StatusCode::FORBIDDEN,
            username,
            next,
            Some(
                "the CSRF token of the sign-in form is missing or invalid (the page may be stale or cookies blocked): reload the page and try again"
                    .into(),
            ),
        );
    }
    if username.starts_with("robot$") {
        return login_page(
            &viewer,
            StatusCode::FORBIDDEN,
            username,
            next,
            Some(format!(
                "{username} is a robot account: robots log in from registry clients (docker login), not to the console; sign in as a user"
            )),
        );
    }
    let addr = viewer.caller.addr;
    let principal = match state.auth.login(username, form.get("password"), addr).await {
        Ok(p) => p,
        Err(e) => {
            let e = PageError::from(e);
            return login_page(&viewer, e.status, username, next, Some(e.message));
        }
    };
    let Principal::User { name, .. } = principal else {
        return login_page(
            &viewer,
            StatusCode::FORBIDDEN,
            username,
            next,
            Some("only user accounts may sign in to the console".into()),
        );
    };
    let id = match berth_auth::generate_secret() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "no randomness for a session id");
            return PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server could not create a session; see the server log",
            )
            .page(&viewer);
        }
    };
    let now = crate::admin::now();
    let session = ConsoleSession {
        id_hash: session_hash(&id),
        username: name.clone(),
        created_at: now,
        expires_at: now + SESSION_SECS,
    };
    if let Err(e) = state.auth.accounts.create_session(&session).await {
        return PageError::from(e).page(&viewer);
    }
    state
        .auth
        .audit(&name, "console.login", &format!("user:{name}"), addr, "")
        .await;
    let mut resp = see_other(&safe_next(next));
    let h = resp.headers_mut();
    for c in [
        set_cookie(SESSION_COOKIE, &id, "/", SESSION_SECS, viewer.secure),
        set_cookie(LOGIN_CSRF_COOKIE, "", "/login", 0, viewer.secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `POST /logout`: the session is deleted server-side; the cookie is cleared.
pub(crate) async fn logout(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let form = match Form::read(body).await {
        Ok(f) => f,
        Err(e) => return e.page(&viewer),
    };
    let mut resp = see_other("/projects");
    if let Some(s) = &viewer.session {
        if let Err(e) = viewer.check_csrf(&form) {
            return e.page(&viewer);
        }
        if let Err(e) = state.auth.accounts.delete_session(&s.id_hash).await {
            return PageError::from(e).page(&viewer);
        }
        state
            .auth
            .audit(
                &s.name,
                "console.logout",
                &format!("user:{}", s.name),
                viewer.caller.addr,
                "",
            )
            .await;
    }
    let c = set_cookie(SESSION_COOKIE, "", "/", 0, viewer.secure);
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; berth_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "berth_session"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "berth"), None);
    }

    #[test]
    fn csrf_tokens_depend_on_the_session_and_differ_from_its_hash() {
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_ne!(csrf_of("a"), session_hash("a"));
        assert_eq!(csrf_of("a").len(), 64);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn next_is_local_only() {
        assert_eq!(safe_next("/projects/x"), "/projects/x");
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example/",
            "/\\evil",
            "/login",
            "javascript:x",
        ] {
            assert_eq!(safe_next(bad), "/projects", "{bad}");
        }
    }

    #[test]
    fn session_cookie_attributes() {
        let c = set_cookie(SESSION_COOKIE, "v", "/", SESSION_SECS, true);
        assert_eq!(
            c,
            "berth_session=v; Path=/; Max-Age=43200; HttpOnly; Secure; SameSite=Strict"
        );
        assert!(!set_cookie(SESSION_COOKIE, "v", "/", 1, false).contains("Secure"));
    }
}
