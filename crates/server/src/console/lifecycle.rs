//! Storage lifecycle pages: garbage collection (`/admin/gc`: runs, run now, dry run) and
//! a project's storage policy (`/projects/NAME/policy`: usage, quota, immutable tags,
//! retention, run retention). Every action is one [`crate::gc::ops`] operation — the same
//! checks and audit records as the JSON API and the CLI — after the CSRF check.

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::view::time;
use super::{Form, Layout, PageError, PageResult, Viewer, render, respond};
use crate::gc::RetentionPolicy;
use crate::gc::ops::{self, PolicyUpdate, RunView};
use crate::state::AppState;
use berth_storage::lifecycle::format_bytes;

async fn with_form<F, Fut>(viewer: &Viewer, body: Body, f: F) -> Response
where
    F: FnOnce(Form) -> Fut,
    Fut: std::future::Future<Output = Result<(String, String), PageError>>,
{
    let result: PageResult = async {
        let form = Form::read(body).await?;
        viewer.check_csrf(&form)?;
        let (to, flash) = f(form).await?;
        Ok(viewer.redirect(&to, Some(&flash)))
    }
    .await;
    respond(viewer, result)
}

struct RunRow {
    id: i64,
    kind: String,
    started: String,
    took: String,
    by: String,
    manifests: u64,
    tags: u64,
    blobs: u64,
    freed: String,
    errors: String,
    detail: String,
}

fn rows(runs: Vec<RunView>) -> Vec<RunRow> {
    runs.into_iter()
        .map(|r| RunRow {
            id: r.id,
            kind: if r.dry_run {
                format!("{} (dry run)", r.kind)
            } else {
                r.kind
            },
            started: time(Some(r.started_at)),
            took: format!("{} s", r.finished_at - r.started_at),
            by: r.started_by,
            manifests: r.manifests_removed,
            tags: r.tags_removed,
            blobs: r.blobs_removed,
            freed: format_bytes(r.bytes_freed),
            errors: r.errors.join("; "),
            detail: r.detail,
        })
        .collect()
}

#[derive(Template)]
#[template(path = "admin_gc.html")]
struct GcPage {
    l: Layout,
    schedule: String,
    grace: String,
    delay: String,
    backlog: u64,
    runs: Vec<RunRow>,
}

fn duration(secs: u64) -> String {
    match secs {
        0 => "0 s".into(),
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// `GET /admin/gc` (system administrators).
pub(crate) async fn gc_page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let runs = ops::runs(&state, &viewer.caller, 50).await?;
        let c = &state.lifecycle.config;
        let page = GcPage {
            l: viewer.layout("Garbage collection"),
            schedule: if c.gc_interval_secs == 0 {
                "on demand only".into()
            } else {
                format!("every {}", duration(c.gc_interval_secs))
            },
            grace: duration(c.blob_grace_secs),
            delay: if c.delete_untagged {
                duration(c.untagged_delay_secs)
            } else {
                "never (kept)".into()
            },
            backlog: state
                .lifecycle
                .store
                .gc_backlog()
                .await
                .map_err(crate::error::ApiError::from)?,
            runs: rows(runs),
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

/// `POST /admin/gc`: run a cycle now (`dry_run` ticked: only report).
pub(crate) async fn gc_run(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let run = ops::run_gc(state, &viewer.caller, form.checked("dry_run"), "console").await?;
        let mut flash = run.detail.clone();
        if !run.errors.is_empty() {
            flash.push_str(&format!(" ({} errors)", run.errors.len()));
        }
        Ok(("/admin/gc".to_string(), flash))
    })
    .await
}

#[derive(Template)]
#[template(path = "project_policy.html")]
struct PolicyPage {
    l: Layout,
    name: String,
    usage: String,
    usage_bytes: u64,
    repositories: u64,
    quota: String,
    quota_bytes: String,
    max_repositories: String,
    immutable: String,
    retention: String,
    percent: String,
    runs: Vec<RunRow>,
}

/// `GET /projects/NAME/policy` (whoever may see the project; the forms change nothing
/// unless the viewer may manage it).
pub(crate) async fn policy_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
) -> Response {
    let result = async {
        let p = ops::policy(&state, &viewer.caller, &project).await?;
        let runs = if viewer.caller.principal.is_system_admin() {
            ops::runs(&state, &viewer.caller, 20)
                .await?
                .into_iter()
                .filter(|r| {
                    r.kind == "retention" && r.detail.starts_with(&format!("project {project}:"))
                })
                .collect()
        } else {
            Vec::new()
        };
        let page = PolicyPage {
            l: viewer.layout(format!("{project}: storage policy")),
            name: project,
            usage: format_bytes(p.usage_bytes),
            usage_bytes: p.usage_bytes,
            repositories: p.repositories,
            quota: p.quota_bytes.map_or("none".into(), format_bytes),
            quota_bytes: p.quota_bytes.map_or(String::new(), |q| q.to_string()),
            percent: p.quota_bytes.map_or(String::new(), |q| {
                format!("{:.1} %", p.usage_bytes as f64 * 100.0 / q.max(1) as f64)
            }),
            max_repositories: p.max_repositories.map_or(String::new(), |m| m.to_string()),
            immutable: p.immutable_tags.join(", "),
            retention: p.retention.as_ref().map_or(String::new(), |r| {
                serde_json::to_string(r).unwrap_or_default()
            }),
            runs: rows(runs),
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

fn optional_number(form: &Form, key: &str) -> Result<Option<u64>, PageError> {
    match form.get(key).trim() {
        "" | "0" => Ok(None),
        v => v.parse().map(Some).map_err(|_| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                format!("{key}: {v:?} is not a whole number"),
            )
        }),
    }
}

/// `POST /projects/NAME/policy`: save the policy (quota fields only change when the viewer
/// is a system administrator).
pub(crate) async fn save_policy(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let admin = viewer.caller.principal.is_system_admin();
        let retention = match form.get("retention").trim() {
            "" => None,
            json => Some(serde_json::from_str::<RetentionPolicy>(json).map_err(|e| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "retention policy: {e}; e.g. {{\"keep_last\":5,\"keep_tags\":[\"v*\"]}}"
                    ),
                )
            })?),
        };
        let update = PolicyUpdate {
            quota_bytes: if admin {
                Some(optional_number(&form, "quota_bytes")?)
            } else {
                None
            },
            max_repositories: if admin {
                Some(optional_number(&form, "max_repositories")?)
            } else {
                None
            },
            immutable_tags: Some(
                form.get("immutable")
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            retention: Some(retention),
        };
        ops::set_policy(state, &viewer.caller, &project, update).await?;
        Ok((
            format!("/projects/{project}/policy"),
            format!("Storage policy of {project} saved."),
        ))
    })
    .await
}

/// `POST /projects/NAME/retention`: run the retention policy now (or a dry run).
pub(crate) async fn run_retention(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let run =
            ops::run_retention(state, &viewer.caller, &project, form.checked("dry_run")).await?;
        Ok((format!("/projects/{project}/policy"), run.detail))
    })
    .await
}
