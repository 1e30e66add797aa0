//! A project's webhooks page (`/projects/NAME/webhooks`, project administrators): the
//! endpoints with their recent delivery log and the count of dropped events; forms to add
//! an endpoint, send a test event, enable/disable and remove one. Every action is one
//! [`crate::webhooks::Webhooks`] operation (the same checks and audit records as the API
//! and the CLI) after the CSRF check.

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_storage::WebhookEvent;

use super::{Form, Layout, PageError, PageResult, Viewer, render, respond};
use crate::state::AppState;
use crate::webhooks::{DeliveryInfo, WebhookChange, WebhookInfo, WebhookSpec};

/// Delivery-log entries shown per endpoint.
const SHOWN: u32 = 20;

struct HookView {
    info: WebhookInfo,
    events: String,
    deliveries: Vec<DeliveryInfo>,
}

#[derive(Template)]
#[template(path = "project_webhooks.html")]
struct WebhooksPage {
    l: Layout,
    name: String,
    dropped: u64,
    hooks: Vec<HookView>,
}

/// `GET /projects/NAME/webhooks`.
pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
) -> Response {
    let result: PageResult = async {
        let hooks = &state.webhooks;
        let auth = &state.auth;
        let mut views = Vec::new();
        for info in hooks.list(auth, &viewer.caller, &project).await? {
            let deliveries = hooks
                .deliveries(auth, &viewer.caller, &project, &info.name, SHOWN)
                .await?;
            views.push(HookView {
                events: info.events.join(", "),
                info,
                deliveries,
            });
        }
        let page = WebhooksPage {
            l: viewer.layout(format!("{project}: webhooks")),
            dropped: hooks.dropped_in(&project),
            name: project,
            hooks: views,
        };
        Ok(render(StatusCode::OK, &page))
    }
    .await;
    respond(&viewer, result)
}

/// `POST /projects/NAME/webhooks`: add an endpoint.
pub(crate) async fn add(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let result: PageResult = async {
        let form = Form::read(body).await?;
        viewer.check_csrf(&form)?;
        let events: Vec<String> = WebhookEvent::ALL
            .iter()
            .filter(|e| form.checked(&format!("ev_{}", e.as_str())))
            .map(|e| e.as_str().to_owned())
            .collect();
        let secret = form.get("secret");
        let spec = WebhookSpec {
            name: form.get("name").trim().to_owned(),
            url: form.get("url").trim().to_owned(),
            events,
            format: Some(form.get("format").to_owned()),
            auth: Some(form.get("auth").to_owned()),
            secret: (!secret.is_empty()).then(|| secret.to_owned()),
            ca_pem: Some(form.get("ca_pem").to_owned()),
            insecure: form.checked("insecure"),
            enabled: true,
        };
        let w = state
            .webhooks
            .add(&state.auth, &viewer.caller, &project, spec)
            .await?;
        Ok(viewer.redirect(
            &format!("/projects/{project}/webhooks"),
            Some(&format!("Webhook {} added.", w.name)),
        ))
    }
    .await;
    respond(&viewer, result)
}

/// `POST /projects/NAME/webhooks/action`: `op` = test, enable, disable or remove.
pub(crate) async fn action(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    body: Body,
) -> Response {
    let result: PageResult = async {
        let form = Form::read(body).await?;
        viewer.check_csrf(&form)?;
        let name = form.get("webhook").to_owned();
        let (hooks, auth, caller) = (&state.webhooks, &state.auth, &viewer.caller);
        let flash = match form.get("op") {
            "test" => {
                let d = hooks.test(auth, caller, &project, &name, "").await?;
                if d.ok {
                    format!(
                        "Test event delivered to {name}: HTTP {} in {} ms.",
                        d.status, d.latency_ms
                    )
                } else {
                    format!("Test event to {name} failed: {}", d.error)
                }
            }
            op @ ("enable" | "disable") => {
                let change = WebhookChange {
                    enabled: Some(op == "enable"),
                    ..Default::default()
                };
                hooks.update(auth, caller, &project, &name, change).await?;
                format!("Webhook {name} {op}d.")
            }
            "remove" => {
                hooks.remove(auth, caller, &project, &name).await?;
                format!("Webhook {name} removed.")
            }
            other => {
                return Err(PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown webhook action {other:?}"),
                ));
            }
        };
        Ok(viewer.redirect(&format!("/projects/{project}/webhooks"), Some(&flash)))
    }
    .await;
    respond(&viewer, result)
}
