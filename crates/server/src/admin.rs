//! Account and project management: the operations behind the admin API, the CLI and the
//! web console, each checking the caller's rights with `berth_auth::policy` and writing
//! the audit log. Callers (HTTP handlers, CLI commands) only parse and format.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_auth::{Principal, hash_password};
use berth_proto::error::ErrorCode;
use berth_storage::{Member, Project, ProjectRole, StorageError, User};

use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ApiResult};

/// The project every registry starts with: public, like Harbor's.
pub const DEFAULT_PROJECT: &str = "library";
/// The administrator account created on first start.
pub const ADMIN_USER: &str = "admin";

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(StorageError::Io(std::io::Error::other(e.to_string())))
}

/// First start: the public `library` project and an administrator. Returns the generated
/// administrator password when one was made (to be shown once, never logged).
pub async fn bootstrap(auth: &Auth, admin_password: Option<&str>) -> ApiResult<Option<String>> {
    let accounts = &auth.accounts;
    if accounts.project(DEFAULT_PROJECT).await?.is_none() {
        match accounts
            .create_project(&Project {
                name: DEFAULT_PROJECT.into(),
                public: true,
                description: "Public images anyone may pull".into(),
                created_at: now(),
            })
            .await
        {
            Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if accounts.count_users().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match admin_password {
        Some(p) if !p.is_empty() => (p.to_string(), false),
        _ => (berth_auth::generate_secret().map_err(internal)?, true),
    };
    let hash = hash_blocking(password.clone()).await?;
    match accounts
        .create_user(&User {
            name: ADMIN_USER.into(),
            password_hash: hash,
            admin: true,
            created_at: now(),
            disabled: false,
        })
        .await
    {
        Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(generated.then_some(password))
}

/// Hash a password off the async workers (Argon2 is slow on purpose).
pub async fn hash_blocking(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(internal)?
        .map_err(|e| {
            ApiError::new(ErrorCode::Unsupported, e.to_string())
                .with_status(axum::http::StatusCode::BAD_REQUEST)
        })
}

/// Create a project; its creator (a user) becomes its project admin.
pub async fn create_project(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    public: bool,
    description: &str,
) -> ApiResult<()> {
    if caller.principal.is_anonymous() || matches!(caller.principal, Principal::Robot(_)) {
        return Err(ApiError::new(
            ErrorCode::Denied,
            "creating a project needs a user login (not anonymous, not a robot account)",
        ));
    }
    if berth_proto::name::validate_repository(name).is_err() || name.contains('/') {
        return Err(ApiError::new(
            ErrorCode::NameInvalid,
            format!(
                "{name:?} is not a valid project name: use lowercase letters, digits and . _ - (one path component)"
            ),
        ));
    }
    auth.accounts
        .create_project(&Project {
            name: name.into(),
            public,
            description: description.into(),
            created_at: now(),
        })
        .await?;
    if let Principal::User { name: user, .. } = &caller.principal {
        auth.accounts
            .set_member(name, user, ProjectRole::ProjectAdmin)
            .await?;
    }
    let detail = if public { "public" } else { "private" };
    auth.audit(&caller.actor(), "project.create", name, caller.addr, detail)
        .await;
    Ok(())
}

/// Members of a project, for those who may see them.
pub async fn members(auth: &Auth, project: &str) -> ApiResult<Vec<Member>> {
    Ok(auth.accounts.members(project).await?)
}
