//! `/admin/registries`: the remote registries (proxy-cache upstreams, replication peers)
//! for system administrators — list with health, add, check, delete. Each change is one
//! [`crate::remotes`] operation, as for the JSON API and the CLI. Secrets are write-only.

use askama::Template;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::Viewer;
use super::manage::{redirect_after, with_form};
use super::{Layout, render, respond};
use crate::admin::format_time;
use crate::remotes::{self, RegistryInfo, RegistrySpec};
use crate::state::AppState;

struct Row {
    r: RegistryInfo,
    health: String,
    ok: bool,
    checked: bool,
}

#[derive(Template)]
#[template(path = "admin_registries.html")]
struct RegistriesPage {
    l: Layout,
    rows: Vec<Row>,
}

/// `GET /admin/registries`
pub(crate) async fn list(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let rows = remotes::list_registries(&state.remotes, &viewer.caller)
            .await?
            .into_iter()
            .map(|r| {
                let (health, ok, checked) = match &r.health {
                    None => ("not checked yet".to_string(), false, false),
                    Some(h) => (
                        format!("{} — {}", format_time(h.checked_at), h.message),
                        h.ok,
                        true,
                    ),
                };
                Row {
                    r,
                    health,
                    ok,
                    checked,
                }
            })
            .collect();
        Ok(render(
            StatusCode::OK,
            &RegistriesPage {
                l: viewer.layout("Registries"),
                rows,
            },
        ))
    }
    .await;
    respond(&viewer, result)
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `POST /admin/registries`: add one, then check it.
pub(crate) async fn add(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let spec = RegistrySpec {
            name: non_empty(form.get("name")),
            url: non_empty(form.get("url")),
            username: non_empty(form.get("username")),
            secret: Some(form.get("secret").to_string()).filter(|s| !s.is_empty()),
            ca_pem: non_empty(form.get("ca_pem")),
            insecure: Some(form.checked("insecure")),
            description: non_empty(form.get("description")),
        };
        let r = remotes::add_registry(&state.auth, &state.remotes, &viewer.caller, spec).await?;
        let r =
            remotes::check_registry(&state.auth, &state.remotes, &viewer.caller, &r.name).await?;
        let flash = match &r.health {
            Some(h) if h.ok => format!("Registry {} added: {}.", r.name, h.message),
            Some(h) => format!(
                "Registry {} added, but its check failed: {}",
                r.name, h.message
            ),
            None => format!("Registry {} added.", r.name),
        };
        Ok(("/admin/registries".to_string(), flash))
    })
    .await
}

/// `POST /admin/registries/check`
pub(crate) async fn check(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let (state, viewer) = (&state, &viewer);
    redirect_after(viewer, body, |form| async move {
        let name = form.get("name");
        let r = remotes::check_registry(&state.auth, &state.remotes, &viewer.caller, name).await?;
        let flash = match &r.health {
            Some(h) if h.ok => format!("{name}: {}.", h.message),
            Some(h) => format!("{name}: check failed: {}", h.message),
            None => format!("{name}: not checked."),
        };
        Ok(("/admin/registries".to_string(), flash))
    })
    .await
}

/// `POST /admin/registries/delete`
pub(crate) async fn delete(State(state): State<AppState>, viewer: Viewer, body: Body) -> Response {
    let (state, viewer) = (&state, &viewer);
    with_form(viewer, body, |form| async move {
        let name = form.get("name");
        remotes::delete_registry(&state.auth, &state.remotes, &viewer.caller, name).await?;
        Ok(viewer.redirect(
            "/admin/registries",
            Some(&format!("Registry {name} deleted.")),
        ))
    })
    .await
}
