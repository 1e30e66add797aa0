//! `/api/v1/replication/…`: rules, runs, executions and stop (system administrators).
//! Listed in [`crate::api::table`] and documented in `openapi.json`.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde::Deserialize;

use super::ops::{self, RuleSpec};
use crate::admin::bad_request;
use crate::api::{ApiCaller, JsonBody};
use crate::error::ApiResult;
use crate::state::AppState;

/// The replication routes (method, path, handler).
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/api/v1/replication/rules", get(list_rules)),
        (Method::POST, "/api/v1/replication/rules", post(add_rule)),
        (
            Method::GET,
            "/api/v1/replication/rules/{name}",
            get(get_rule),
        ),
        (
            Method::PUT,
            "/api/v1/replication/rules/{name}",
            put(update_rule),
        ),
        (
            Method::DELETE,
            "/api/v1/replication/rules/{name}",
            delete(delete_rule),
        ),
        (
            Method::POST,
            "/api/v1/replication/rules/{name}/run",
            post(run_rule),
        ),
        (
            Method::GET,
            "/api/v1/replication/executions",
            get(list_executions),
        ),
        (
            Method::GET,
            "/api/v1/replication/executions/{id}",
            get(get_execution),
        ),
        (
            Method::POST,
            "/api/v1/replication/executions/{id}/stop",
            post(stop_execution),
        ),
    ]
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> ApiResult<Response> {
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(v).expect("serializable"),
    )
        .into_response())
}

async fn list_rules(State(s): State<AppState>, ApiCaller(c): ApiCaller) -> ApiResult<Response> {
    json(
        StatusCode::OK,
        &ops::list_rules(s.replication.store.as_ref(), &c).await?,
    )
}

async fn add_rule(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    JsonBody(b): JsonBody<RuleSpec>,
) -> ApiResult<Response> {
    let r = ops::add_rule(&s.auth, s.replication.store.as_ref(), &c, &b).await?;
    json(StatusCode::CREATED, &r)
}

async fn get_rule(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    json(
        StatusCode::OK,
        &ops::get_rule(s.replication.store.as_ref(), &c, &name).await?,
    )
}

async fn update_rule(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<RuleSpec>,
) -> ApiResult<Response> {
    if b.name != name {
        return Err(bad_request(format!(
            "the body names rule {:?} but the path {name:?}; rules cannot be renamed",
            b.name
        )));
    }
    let r = ops::update_rule(&s.auth, s.replication.store.as_ref(), &c, &b).await?;
    json(StatusCode::OK, &r)
}

async fn delete_rule(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ops::delete_rule(&s.auth, s.replication.store.as_ref(), &c, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn run_rule(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let e = ops::run_rule(&s.auth, s.replication.store.as_ref(), &c, &name).await?;
    s.replication.wake();
    json(StatusCode::ACCEPTED, &e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecQuery {
    rule: Option<String>,
    limit: Option<u32>,
}

async fn list_executions(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    uri: Uri,
) -> ApiResult<Response> {
    let q = axum::extract::Query::<ExecQuery>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    let list = ops::executions(
        s.replication.store.as_ref(),
        &c,
        q.rule.as_deref().filter(|r| !r.is_empty()),
        q.limit.unwrap_or(50),
    )
    .await?;
    json(StatusCode::OK, &list)
}

async fn get_execution(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    json(
        StatusCode::OK,
        &ops::execution(s.replication.store.as_ref(), &c, id).await?,
    )
}

async fn stop_execution(
    State(s): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    json(
        StatusCode::OK,
        &ops::stop(&s.auth, s.replication.store.as_ref(), &c, id).await?,
    )
}
