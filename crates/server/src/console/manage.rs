//! Forms that change projects, members, robots and users, and the administration pages
//! (users, audit log, registry certificate). Every change is one [`crate::admin`]
//! operation — the same checks and audit records as the JSON API and the CLI — after the
//! form's CSRF token was checked.

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_storage::AuditFilter;
use serde::Deserialize;

use super::pages::PageQuery;
use super::view::{LIST_PAGE, Pager, time};
use super::{Form, Layout, PageError, PageResult, Viewer, render, respond};
use crate::admin;
use crate::state::{AppState, TlsInfo};

/// Run a form handler: read the body, check the CSRF token, then `f`.
pub(super) async fn with_form<F, Fut>(viewer: &Viewer, body: Body, f: F) -> Response
where
    F: FnOnce(Form) -> Fut,
    Fut: std::future::Future<Output = PageResult>,
{
    let result = async {
        let form = Form::read(body).await?;
        viewer.check_csrf(&form)?;
        f(form).await
    }
    .await;
    respond(viewer, result)
}

/// Run a form handler whose success is a redirect with a flash message: `f` answers
/// where to go and what to say.
pub(super) async fn redirect_after<F, Fut>(viewer: &Viewer, body: Body, f: F) -> Response
where
    F: FnOnce(Form) -> Fut,
    Fut: std::future::Future<Output = Result<(String, String), PageError>>,
{
    with_form(viewer, body, |form| async move {
        let (to, flash) = f(form).await?;
        Ok(viewer.redirect(&to, Some(&flash)))
    })
    .await
}

fn visibility(public: bool) -> &'static str {
    if public { "public" } else { "private" }
}

fn project_url(name: &str) -> String {
    format!("/projects/{name}")
}

/// `POST /projects`: create a project (private unless *Public* was ticked).
pub(crate) async fn create_project(
    State(state): State<AppState>,
    viewer: Viewer,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let name = form.get("name").trim();
        let public = form.checked("public");
        let proxy = form.get("proxy").trim();
        if !proxy.is_empty() {
            crate::proxy::create_proxy_project(
                &state.auth,
                &state.remotes,
                &viewer.caller,
                name,
                public,
                form.get("description").trim(),
                proxy,
            )
            .await?;
            state.proxy.forget(name);
            let vis = visibility(public);
            return Ok((
                project_url(name),
                format!("Project {name} created ({vis}), a proxy cache of registry {proxy}."),
            ));
        }
        admin::create_project(
            &state.auth,
            &viewer.caller,
            name,
            public,
            form.get("description").trim(),
        )
        .await?;
        let vis = visibility(public);
        Ok((
            project_url(name),
            format!("Project {name} created ({vis})."),
        ))
    })
    .await
}

/// `POST /projects/NAME/settings`: visibility and description (project admins).
pub(crate) async fn update_project(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let public = form.checked("public");
        let description = form.get("description").trim().to_string();
        admin::update_project(
            &state.auth,
            &viewer.caller,
            &project,
            Some(public),
            Some(description),
        )
        .await?;
        let vis = visibility(public);
        Ok((
            project_url(&project),
            format!("Settings of {project} saved ({vis})."),
        ))
    })
    .await
}

/// `POST /projects/NAME/delete`: refused (409) while the project has repositories.
pub(crate) async fn delete_project(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |_form| async move {
        admin::delete_project(&state.auth, &viewer.caller, &project).await?;
        Ok((
            "/projects".to_string(),
            format!("Project {project} deleted."),
        ))
    })
    .await
}

/// `POST /projects/NAME/members`: add a member or change their role.
pub(crate) async fn set_member(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let user = form.get("username").trim();
        let role = admin::parse_role(form.get("role"))?;
        admin::set_member(&state.auth, &viewer.caller, &project, user, role).await?;
        Ok((
            project_url(&project),
            format!("{user} is now {} of {project}.", role.as_str()),
        ))
    })
    .await
}

/// `POST /projects/NAME/members/remove`
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let user = form.get("username");
        admin::remove_member(&state.auth, &viewer.caller, &project, user).await?;
        Ok((
            project_url(&project),
            format!("{user} is no longer a member of {project}."),
        ))
    })
    .await
}

#[derive(Template)]
#[template(path = "robot_created.html")]
struct RobotCreated {
    l: Layout,
    project: String,
    login: String,
    secret: String,
    permission: &'static str,
    expires: String,
    host: String,
}

/// `POST /projects/NAME/robots`: the secret is on the answer page and nowhere else.
pub(crate) async fn create_robot(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let name = form.get("name").trim();
        let push = match form.get("permission") {
            "push" | "pull,push" | "pull+push" => true,
            "pull" | "" => false,
            other => {
                return Err(PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("permission {other:?} is not one of pull, push (pull and push)"),
                ));
            }
        };
        let days = form.get("expires_days").trim();
        let expires = if days.is_empty() {
            None
        } else {
            Some(days.parse::<u32>().map_err(|_| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "expiry {days:?} is not a number of days; give 1 to {} or leave it empty for no expiry",
                        admin::MAX_ROBOT_DAYS
                    ),
                )
            })?)
        };
        let robot = admin::create_robot(
            &state.auth,
            &viewer.caller,
            &project,
            name,
            push,
            expires,
            form.get("description").trim(),
        )
        .await?;
        let page = RobotCreated {
            l: viewer.layout(format!("Robot account {}", robot.robot.name)),
            project: project.clone(),
            permission: if push { "pull and push" } else { "pull" },
            expires: robot
                .robot
                .expires_at
                .map_or_else(|| "never".to_string(), admin::format_time),
            login: robot.robot.name,
            secret: robot.secret,
            host: viewer.host.clone(),
        };
        Ok(render(StatusCode::OK, &page))
    })
    .await
}

/// `POST /projects/NAME/robots/revoke`
pub(crate) async fn revoke_robot(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let robot = form.get("robot");
        let info = admin::revoke_robot(&state.auth, &viewer.caller, Some(&project), robot).await?;
        Ok((
            project_url(&project),
            format!("Robot account {} revoked.", info.name),
        ))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Administration
// ---------------------------------------------------------------------------------------

struct UserRow {
    name: String,
    admin: bool,
    created: String,
    disabled: bool,
    me: bool,
}

#[derive(Template)]
#[template(path = "admin_users.html")]
struct UsersPage {
    l: Layout,
    users: Vec<UserRow>,
    pager: Pager,
    /// Free space and reserve of the data directory (one line above the users).
    storage: String,
}

/// "12.3 GiB free of 100.0 GiB, 1.0 GiB reserve", or why it is not known.
fn storage_line(state: &AppState) -> String {
    use crate::limits::human_bytes;
    match state.space.report() {
        Ok(s) => {
            let mut line = format!(
                "{} free of {}; reserve {}",
                human_bytes(s.free),
                human_bytes(s.total),
                human_bytes(s.reserve)
            );
            if s.in_reserve() {
                line.push_str(" — below the reserve: new uploads are refused until space is freed");
            }
            line
        }
        Err(e) => format!("free space unknown: {e}"),
    }
}

/// `GET /admin/users[?page=N]` (system administrators), a page at a time from the
/// database.
pub(crate) async fn users(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<PageQuery>,
) -> Response {
    let result = async {
        let page = q.number()?;
        if !viewer.caller.principal.is_system_admin() {
            // The refusal of admin::list_users, as for the JSON API.
            admin::list_users(&state.auth, &viewer.caller).await?;
        }
        let me = viewer.session.as_ref().map(|s| s.name.clone());
        let offset = (page as u64 - 1).saturating_mul(LIST_PAGE as u64);
        let mut users = state
            .auth
            .accounts
            .users_page(offset, LIST_PAGE as u32 + 1)
            .await?;
        let pager = Pager::new(page, users.len() > LIST_PAGE, "/admin/users?page=");
        users.truncate(LIST_PAGE);
        let users = users
            .into_iter()
            .map(admin::UserInfo::from)
            .map(|u| UserRow {
                me: me.as_deref() == Some(u.name.as_str()),
                created: admin::format_time(u.created_at),
                admin: u.admin,
                disabled: u.disabled,
                name: u.name,
            })
            .collect();
        let page = UsersPage {
            l: viewer.layout("Users"),
            users,
            pager,
            storage: storage_line(&state),
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

#[derive(Template)]
#[template(path = "password_shown.html")]
struct PasswordShown {
    l: Layout,
    user: String,
    password: String,
    created: bool,
}

/// `POST /admin/users`: a new user; with an empty password one is generated and shown once.
pub(crate) async fn add_user(
    State(state): State<AppState>,
    viewer: Viewer,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let name = form.get("username").trim();
        let password = Some(form.get("password"))
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let new = admin::add_user(
            &state.auth,
            &viewer.caller,
            name,
            password,
            form.checked("admin"),
        )
        .await?;
        match new.password {
            Some(password) => Ok(render(
                StatusCode::OK,
                &PasswordShown {
                    l: viewer.layout(format!("User {name}")),
                    user: name.to_string(),
                    password,
                    created: true,
                },
            )),
            None => Ok(viewer.redirect("/admin/users", Some(&format!("User {name} created.")))),
        }
    })
    .await
}

/// `POST /admin/users/password`: reset a password (generated and shown once when empty);
/// the user's sessions end.
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    viewer: Viewer,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let name = form.get("username");
        let (password, generated) = match form.get("password") {
            "" => (admin::generate_password()?, true),
            p => (p.to_string(), false),
        };
        admin::set_password(&state.auth, &viewer.caller, name, &password).await?;
        if generated {
            return Ok(render(
                StatusCode::OK,
                &PasswordShown {
                    l: viewer.layout(format!("User {name}")),
                    user: name.to_string(),
                    password,
                    created: false,
                },
            ));
        }
        Ok(viewer.redirect(
            "/admin/users",
            Some(&format!(
                "Password of {name} changed; their sessions ended."
            )),
        ))
    })
    .await
}

/// `POST /admin/users/admin`: grant (`admin=true`) or take system administration.
pub(crate) async fn set_admin(
    State(state): State<AppState>,
    viewer: Viewer,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let name = form.get("username");
        let grant = form.checked("admin");
        admin::set_admin(&state.auth, &viewer.caller, name, grant).await?;
        let what = if grant {
            "is now a system administrator"
        } else {
            "is no longer a system administrator"
        };
        Ok(("/admin/users".to_string(), format!("{name} {what}.")))
    })
    .await
}

/// `POST /admin/users/delete`
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    viewer: Viewer,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let name = form.get("username");
        admin::delete_user(&state.auth, &viewer.caller, name).await?;
        Ok(("/admin/users".to_string(), format!("User {name} deleted.")))
    })
    .await
}

#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    before: String,
}

struct AuditRow {
    id: i64,
    at: String,
    actor: String,
    action: String,
    resource: String,
    addr: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
struct AuditPage {
    l: Layout,
    actor: String,
    action: String,
    resource: String,
    rows: Vec<AuditRow>,
    next: Option<String>,
}

/// Audit events per page.
const AUDIT_PAGE: u32 = 100;

/// `GET /admin/audit?actor=&action=&resource=&before=` (system administrators).
pub(crate) async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    let result = async {
        let some = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let before_id = match q.before.trim() {
            "" => None,
            b => Some(b.parse::<i64>().map_err(|_| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("before={b:?} is not an event id"),
                )
            })?),
        };
        let filter = AuditFilter {
            actor: some(&q.actor),
            action: some(&q.action),
            resource_prefix: some(&q.resource),
            before_id,
            limit: AUDIT_PAGE,
            ..AuditFilter::default()
        };
        let events = admin::audit_log(&state.auth, &viewer.caller, &filter).await?;
        let next = (events.len() == AUDIT_PAGE as usize)
            .then(|| events.last().map(|e| e.id))
            .flatten()
            .map(|id| {
                serde_urlencoded::to_string([
                    ("actor", q.actor.trim()),
                    ("action", q.action.trim()),
                    ("resource", q.resource.trim()),
                    ("before", &id.to_string()),
                ])
                .unwrap_or_default()
            });
        let rows = events
            .into_iter()
            .map(|e| AuditRow {
                id: e.id,
                at: time(Some(e.at)),
                actor: e.actor,
                action: e.action,
                resource: e.resource,
                addr: e.client_addr,
                detail: e.detail,
            })
            .collect();
        let page = AuditPage {
            l: viewer.layout("Audit log"),
            actor: q.actor.trim().to_string(),
            action: q.action.trim().to_string(),
            resource: q.resource.trim().to_string(),
            rows,
            next,
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

#[derive(Template)]
#[template(path = "admin_certificate.html")]
struct CertificatePage {
    l: Layout,
    host: String,
    /// Berth made the CA: it can be downloaded and trusted.
    own_ca: bool,
    fingerprint: String,
    expires: String,
    steps: String,
    /// Why no CA can be offered.
    no_ca: String,
}

/// `GET /admin/certificate`: download the CA and the exact trust steps for this host:port.
/// Open to everyone signed in as a system administrator (the CA itself, at `/ca.crt`, is
/// public).
pub(crate) async fn certificate(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        if !viewer.caller.principal.is_system_admin() {
            // Same answer as the other administration pages.
            admin::list_users(&state.auth, &viewer.caller).await?;
        }
        let mut page = CertificatePage {
            l: viewer.layout("Registry certificate"),
            host: viewer.host.clone(),
            own_ca: false,
            fingerprint: String::new(),
            expires: String::new(),
            steps: String::new(),
            no_ca: String::new(),
        };
        match &state.tls {
            TlsInfo::OwnCa { ca_crt } => {
                let pem = tokio::fs::read(ca_crt).await.map_err(|e| {
                    tracing::error!(path = %ca_crt.display(), error = %e, "cannot read ca.crt");
                    PageError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the CA certificate file of this server cannot be read; see the server log",
                    )
                })?;
                page.own_ca = true;
                if let Ok(certs) = berth_pki::parse_pem_bundle(&pem)
                    && let Some(first) = certs.first()
                {
                    use sha2::Digest as _;
                    let digest = sha2::Sha256::digest(first.as_ref());
                    page.fingerprint = digest
                        .iter()
                        .map(|b| format!("{b:02X}"))
                        .collect::<Vec<_>>()
                        .join(":");
                }
                if let Ok(summary) = berth_pki::describe_cert(&String::from_utf8_lossy(&pem)) {
                    page.expires = summary.not_after;
                }
                page.steps = trust_steps(&viewer.host);
            }
            TlsInfo::Operator { cert } => {
                page.no_ca = format!(
                    "This server presents a certificate its operator supplied ({}); Berth did not make it and does not know which CA issued it. If a public CA issued it, clients need no extra steps; otherwise ask the operator for the issuing CA certificate and follow the same steps as for a Berth CA (berth cert init prints them).",
                    cert.display()
                );
            }
            TlsInfo::PlainHttp => {
                page.no_ca = "This server speaks plain HTTP behind a TLS-terminating proxy; clients must trust the proxy's certificate. Ask the operator for its CA.".to_string();
            }
        }
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

/// [`berth_pki::trust_instructions`] for `registry`, with the CA file where the browser
/// saved it (`ca.crt` in the current directory) rather than the server's path.
fn trust_steps(registry: &str) -> String {
    let local = std::path::Path::new("ca.crt");
    let text = berth_pki::trust_instructions(local, registry);
    match std::path::absolute(local) {
        Ok(abs) => text.replace(&abs.display().to_string(), "ca.crt"),
        Err(_) => text,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trust_steps_name_the_registry_and_the_downloaded_file() {
        let steps = super::trust_steps("registry.example:5443");
        assert!(
            steps.contains("/etc/docker/certs.d/registry.example:5443"),
            "{steps}"
        );
        assert!(steps.contains("hosts.toml"), "{steps}");
        assert!(steps.contains("image-fetcher-ca-bundle"), "{steps}");
        assert!(steps.contains("cp ca.crt "), "{steps}");
    }
}
