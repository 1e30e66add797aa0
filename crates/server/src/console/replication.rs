//! The Replication pages (system administrators): `/admin/replication` lists the rules and
//! recent executions (run a rule, stop an execution), `/admin/replication/executions/ID`
//! shows one execution's per-artifact tasks. Every action is one
//! [`crate::replication::ops`] operation after the CSRF check.

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_storage::lifecycle::format_bytes;

use super::view::time;
use super::{Form, Layout, PageError, PageResult, Viewer, render, respond};
use crate::replication::ops::{self, ExecutionView, RuleSpec, TaskView};
use crate::state::AppState;

struct ExecRow {
    id: i64,
    rule: String,
    trigger: String,
    status: String,
    started: String,
    ended: String,
    tasks: u64,
    succeeded: u64,
    failed: u64,
    skipped: u64,
    bytes: String,
    message: String,
    running: bool,
}

fn exec_row(e: ExecutionView) -> ExecRow {
    ExecRow {
        running: matches!(e.status.as_str(), "running" | "pending"),
        id: e.id,
        rule: e.rule,
        trigger: e.trigger,
        status: e.status,
        started: time(Some(e.started_at)),
        ended: time(e.ended_at),
        tasks: e.tasks,
        succeeded: e.succeeded,
        failed: e.failed,
        skipped: e.skipped,
        bytes: format_bytes(e.bytes),
        message: e.message,
    }
}

#[derive(Template)]
#[template(path = "admin_replication.html")]
struct ReplicationPage {
    l: Layout,
    rules: Vec<RuleSpec>,
    executions: Vec<ExecRow>,
}

/// `GET /admin/replication`.
pub(crate) async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let store = state.replication.store.as_ref();
        let rules = ops::list_rules(store, &viewer.caller).await?;
        let executions = ops::executions(store, &viewer.caller, None, 50).await?;
        let page = ReplicationPage {
            l: viewer.layout("Replication"),
            rules,
            executions: executions.into_iter().map(exec_row).collect(),
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

struct TaskRow {
    id: i64,
    operation: String,
    source: String,
    destination: String,
    reference: String,
    digest: String,
    status: String,
    bytes: String,
    error: String,
}

fn task_row(t: TaskView) -> TaskRow {
    TaskRow {
        id: t.id,
        operation: t.operation,
        source: t.source,
        destination: t.destination,
        reference: t.reference,
        digest: t.digest,
        status: t.status,
        bytes: format_bytes(t.bytes),
        error: t.error,
    }
}

#[derive(Template)]
#[template(path = "admin_replication_execution.html")]
struct ExecutionPage {
    l: Layout,
    e: ExecRow,
    tasks: Vec<TaskRow>,
}

/// `GET /admin/replication/executions/ID`.
pub(crate) async fn execution(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> Response {
    let result = async {
        let d = ops::execution(state.replication.store.as_ref(), &viewer.caller, id).await?;
        let page = ExecutionPage {
            l: viewer.layout(format!("Replication execution {id}")),
            e: exec_row(d.execution),
            tasks: d.task_list.into_iter().map(task_row).collect(),
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

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

/// `POST /admin/replication/run` (`rule`).
pub(crate) async fn run(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let e = ops::run_rule(
            &state.auth,
            state.replication.store.as_ref(),
            &viewer.caller,
            form.get("rule"),
        )
        .await?;
        state.replication.wake();
        Ok((
            "/admin/replication".to_string(),
            format!("queued execution {} of rule {}", e.id, e.rule),
        ))
    })
    .await
}

/// `POST /admin/replication/stop` (`id`).
pub(crate) async fn stop(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let id: i64 = form
            .get("id")
            .parse()
            .map_err(|_| PageError::from(crate::admin::bad_request("no execution id")))?;
        let e = ops::stop(
            &state.auth,
            state.replication.store.as_ref(),
            &viewer.caller,
            id,
        )
        .await?;
        Ok((
            "/admin/replication".to_string(),
            format!("asked execution {} to stop", e.id),
        ))
    })
    .await
}
