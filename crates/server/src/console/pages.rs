//! Read-only pages: home, projects, one project, the administration entry.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_auth::Principal;
use serde::Deserialize;

use super::session::see_other;
use super::view::{Pager, human_bytes, page_number, page_of, time};
use super::{Layout, PageError, PageResult, Viewer, render, respond};
use crate::admin;
use crate::state::AppState;

/// Repositories listed per page of a project.
pub(crate) const REPOS_PER_PAGE: u32 = 100;

/// `GET /`
pub(crate) async fn home() -> Response {
    see_other("/projects")
}

/// `GET /admin`
pub(crate) async fn admin_home() -> Response {
    see_other("/admin/users")
}

struct ProjectRow {
    name: String,
    public: bool,
    repositories: u64,
    bytes: u64,
    storage: String,
    role: String,
    /// The registry a proxy-cache project mirrors ("" for an ordinary project).
    proxy: String,
}

#[derive(Template)]
#[template(path = "projects.html")]
struct ProjectsPage {
    l: Layout,
    rows: Vec<ProjectRow>,
    pager: Pager,
    can_create: bool,
    /// Registries a system administrator may make a proxy-cache project of.
    registries: Vec<String>,
}

/// `?page=N` of a list (from 1).
#[derive(Deserialize)]
pub(crate) struct PageQuery {
    #[serde(default)]
    page: String,
}

impl PageQuery {
    pub(crate) fn number(&self) -> Result<usize, PageError> {
        page_number("page", &self.page)
    }
}

/// `GET /projects[?page=N]`: what [`admin::list_projects`] lets the viewer see, a page
/// at a time (usage is counted only for the rows shown).
pub(crate) async fn projects(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<PageQuery>,
) -> Response {
    let result = async {
        let page = q.number()?;
        let list = admin::list_projects(&state.auth, &viewer.caller).await?;
        let (list, pager) = page_of(list, page, "/projects?page=");
        let proxies: std::collections::HashMap<String, String> = state
            .remotes
            .store
            .proxy_projects()
            .await?
            .into_iter()
            .collect();
        let mut rows = Vec::with_capacity(list.len());
        for p in list {
            let usage = state.meta.project_usage(&p.name).await?;
            rows.push(ProjectRow {
                storage: human_bytes(usage.bytes),
                bytes: usage.bytes,
                repositories: usage.repositories,
                public: p.public,
                role: p.role.unwrap_or_default(),
                proxy: proxies.get(&p.name).cloned().unwrap_or_default(),
                name: p.name,
            });
        }
        let registries = if viewer.caller.principal.is_system_admin() {
            state
                .remotes
                .store
                .list_registries()
                .await?
                .into_iter()
                .map(|r| r.name)
                .collect()
        } else {
            Vec::new()
        };
        let page = ProjectsPage {
            l: viewer.layout("Projects"),
            rows,
            pager,
            can_create: matches!(viewer.caller.principal, Principal::User { .. }),
            registries,
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

struct RepoRow {
    name: String,
    tags: u64,
    last_push: String,
    size: String,
    bytes: u64,
}

struct MemberRow {
    user: String,
    role: String,
}

struct RobotRow {
    name: String,
    permission: &'static str,
    expires: String,
    status: &'static str,
    active: bool,
    description: String,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    l: Layout,
    name: String,
    public: bool,
    description: String,
    role: String,
    repositories: u64,
    storage: String,
    repos: Vec<RepoRow>,
    next_after: Option<String>,
    show_members: bool,
    members: Vec<MemberRow>,
    members_pager: Pager,
    manage: bool,
    robots: Vec<RobotRow>,
    robots_pager: Pager,
    roles: [&'static str; 4],
    /// Set for a proxy-cache project.
    proxy: Option<ProxyView>,
}

/// What the project page says about a proxy-cache project: its upstream and how to make
/// containerd use it as a mirror.
struct ProxyView {
    registry: String,
    url: String,
    /// `/etc/containerd/certs.d/<dir>/hosts.toml`
    hosts_path: String,
    hosts_toml: String,
}

#[derive(Deserialize)]
pub(crate) struct ProjectQuery {
    /// Repositories after this name.
    #[serde(default)]
    after: String,
    #[serde(default)]
    members_page: String,
    #[serde(default)]
    robots_page: String,
}

/// `GET /projects/NAME`: 404 for a project the viewer may not see (as for a missing one).
pub(crate) async fn project(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Response {
    let result = project_page(&state, &viewer, &name, &q).await;
    respond(&viewer, result)
}

async fn project_page(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    q: &ProjectQuery,
) -> PageResult {
    let auth = &state.auth;
    let members_page = page_number("members_page", &q.members_page)?;
    let robots_page = page_number("robots_page", &q.robots_page)?;
    let after = q.after.as_str();
    let info = admin::get_project(auth, &viewer.caller, name).await?;
    let usage = state.meta.project_usage(name).await?;
    let after = (!after.is_empty()).then_some(after);
    let mut summaries = state
        .meta
        .repository_summaries(name, after, REPOS_PER_PAGE + 1)
        .await?;
    let next_after = (summaries.len() > REPOS_PER_PAGE as usize).then(|| {
        summaries.truncate(REPOS_PER_PAGE as usize);
        summaries.last().map(|s| s.name.clone()).unwrap_or_default()
    });
    let repos = summaries
        .into_iter()
        .map(|s| RepoRow {
            tags: s.tag_count,
            last_push: time(s.last_push),
            size: human_bytes(s.bytes),
            bytes: s.bytes,
            name: s.name,
        })
        .collect();
    // Members are shown to those admin::list_members allows; robots and the management
    // forms to those admin::list_robots allows (project admins, system admins).
    let members = admin::list_members(auth, &viewer.caller, name).await;
    let robots = admin::list_robots(auth, &viewer.caller, name).await;
    let manage = robots.is_ok();
    let show_members = members.is_ok();
    let (members, members_pager) = page_of(
        members.unwrap_or_default(),
        members_page,
        format!("/projects/{name}?members_page="),
    );
    let (robots, robots_pager) = page_of(
        robots.unwrap_or_default(),
        robots_page,
        format!("/projects/{name}?robots_page="),
    );
    let members = members
        .into_iter()
        .map(|m| MemberRow {
            user: m.user,
            role: m.role,
        })
        .collect();
    let robots = robots
        .into_iter()
        .map(|r| RobotRow {
            permission: if r.push { "pull, push" } else { "pull" },
            expires: r
                .expires_at
                .map_or_else(|| "never".to_string(), admin::format_time),
            status: if r.revoked {
                "revoked"
            } else if r.active {
                "active"
            } else {
                "expired"
            },
            active: r.active,
            description: r.description,
            name: r.name,
        })
        .collect();
    let proxy = match state.remotes.store.project_proxy(name).await? {
        None => None,
        Some(registry) => {
            let url = state
                .remotes
                .store
                .registry(&registry)
                .await?
                .map(|r| r.url)
                .unwrap_or_default();
            let scheme = if viewer.secure { "https" } else { "http" };
            let ca = format!("/etc/containerd/certs.d/{}/ca.crt", viewer.host);
            Some(ProxyView {
                hosts_path: format!(
                    "/etc/containerd/certs.d/{}/hosts.toml",
                    crate::proxy::containerd_host_dir(&url)
                ),
                hosts_toml: crate::proxy::containerd_mirror_snippet(
                    &crate::proxy::containerd_server(&url),
                    &format!("{scheme}://{}", viewer.host),
                    name,
                    viewer.secure.then_some(ca.as_str()),
                ),
                registry,
                url,
            })
        }
    };
    let page = ProjectPage {
        proxy,
        l: viewer.layout(format!("Project {name}")),
        name: info.name,
        public: info.public,
        description: info.description,
        role: info.role.unwrap_or_default(),
        repositories: usage.repositories,
        storage: human_bytes(usage.bytes),
        repos,
        next_after,
        show_members,
        members,
        members_pager,
        manage,
        robots,
        robots_pager,
        roles: ["guest", "developer", "maintainer", "project_admin"],
    };
    Ok(render(StatusCode::OK, &page))
}

/// A 404 for what the viewer may not see or what does not exist.
pub(crate) fn not_found(what: String) -> PageError {
    PageError::new(StatusCode::NOT_FOUND, what)
}
