//! Account and project management: the operations behind the admin API (`api`), the CLI
//! (`berth project|user|robot|audit`) and the web console. Each operation checks the
//! caller's rights with `berth_auth::policy` and writes the audit log; callers (HTTP
//! handlers, CLI commands) only parse and format.
//!
//! | operation | who may |
//! |---|---|
//! | create a project | any user (who becomes its project admin) |
//! | list / get projects | public ones: everyone; private ones: their members, system admins |
//! | update / delete a project, set / remove members, create / list / revoke / delete robots | its project admins, system admins ([`berth_auth::can_manage_project`]) |
//! | list members | the project's members and robots, system admins |
//! | add / list / delete users, grant or take system admin | system admins |
//! | change a password | system admins, and every user for their own |
//! | read the audit log | system admins |
//!
//! A private project the caller may not see answers 404, like a missing one; a visible
//! project the caller may not manage answers 403. The last active system administrator
//! can be neither deleted nor demoted (409).
//!
//! The CLI acts as [`local_admin`]: a system administrator named [`LOCAL_ADMIN`] (a name no
//! account may take), recorded as such in the audit log.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use berth_auth::{Principal, ProjectLookup, Role, can_manage_project, hash_password};
use berth_proto::error::ErrorCode;
use berth_storage::{AuditEvent, AuditFilter, Member, Project, ProjectRole, StorageError, User};
use serde::Serialize;

use crate::auth::{Auth, Caller, role_of};
use crate::error::{ApiError, ApiResult};

/// The project every registry starts with: public, like Harbor's.
pub const DEFAULT_PROJECT: &str = "library";
/// The administrator account created on first start.
pub const ADMIN_USER: &str = "admin";
/// The audit-log actor of the CLI, which works on the data directory directly.
pub const LOCAL_ADMIN: &str = "local-admin";
/// Shortest password a user may choose (generated ones are 43 characters).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest robot lifetime accepted, in days (ten years).
pub const MAX_ROBOT_DAYS: u32 = 3650;

/// Serializes changes to administrator accounts inside this process, so that two
/// concurrent requests cannot both remove "the other" last administrator.
static ADMIN_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as RFC 3339 UTC, for tables.
pub fn format_time(secs: i64) -> String {
    crate::token::rfc3339(secs.max(0) as u64)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(StorageError::Io(std::io::Error::other(e.to_string())))
}

fn denied(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Denied, detail).with_status(StatusCode::FORBIDDEN)
}

fn not_found(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::NameUnknown, detail).with_status(StatusCode::NOT_FOUND)
}

/// A 400 for a request whose input is wrong.
pub fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::NameInvalid, detail).with_status(StatusCode::BAD_REQUEST)
}

fn conflict(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, detail).with_status(StatusCode::CONFLICT)
}

fn unauthenticated(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        format!("{what} needs a login; send Basic credentials or a bearer token"),
    )
}

/// The caller the CLI acts as: a system administrator named [`LOCAL_ADMIN`] on this host.
pub fn local_admin() -> Caller {
    Caller {
        principal: Principal::User {
            name: LOCAL_ADMIN.into(),
            system_admin: true,
        },
        token: None,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

fn is_local_admin(caller: &Caller) -> bool {
    matches!(&caller.principal, Principal::User { name, system_admin: true } if name == LOCAL_ADMIN)
}

async fn audit(auth: &Auth, caller: &Caller, action: &str, resource: &str, detail: &str) {
    auth.audit(&caller.actor(), action, resource, caller.addr, detail)
        .await;
}

// ---------------------------------------------------------------------------------------
// Views: what the API returns and `--output json` prints (one shape for both).
// ---------------------------------------------------------------------------------------

/// A project as shown to a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectInfo {
    pub name: String,
    pub public: bool,
    pub description: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The caller's role in it, if a member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A user account (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub name: String,
    /// System administrator.
    pub admin: bool,
    pub created_at: i64,
    pub disabled: bool,
}

/// A new user, with the generated password when none was given (shown only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewUser {
    #[serde(flatten)]
    pub user: UserInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// One member of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub project: String,
    pub user: String,
    /// `project_admin`, `maintainer`, `developer` or `guest`.
    pub role: String,
}

/// A robot account (never its secret or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RobotInfo {
    /// The login name, `robot$<project>+<name>`.
    pub name: String,
    pub project: String,
    /// Pull and push; otherwise pull only.
    pub push: bool,
    /// Unix seconds after which it is refused; absent for no expiry.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// Neither revoked nor expired.
    pub active: bool,
    pub created_at: i64,
    pub description: String,
}

/// A new robot with its secret: returned once, never again retrievable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewRobot {
    #[serde(flatten)]
    pub robot: RobotInfo,
    pub secret: String,
}

/// One audit-log event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub client_addr: String,
    pub detail: String,
}

/// A project role of the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub project: String,
    pub role: String,
}

/// Who the caller is (`GET /api/v1/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Me {
    pub name: String,
    /// `user` or `robot`.
    pub kind: String,
    /// System administrator.
    pub admin: bool,
    /// Projects the caller has a role in (a robot: its project, as `developer` when it
    /// may push, `guest` otherwise).
    pub projects: Vec<Membership>,
}

impl From<Project> for ProjectInfo {
    fn from(p: Project) -> Self {
        ProjectInfo {
            name: p.name,
            public: p.public,
            description: p.description,
            created_at: p.created_at,
            role: None,
        }
    }
}

impl From<User> for UserInfo {
    fn from(u: User) -> Self {
        UserInfo {
            name: u.name,
            admin: u.admin,
            created_at: u.created_at,
            disabled: u.disabled,
        }
    }
}

impl From<Member> for MemberInfo {
    fn from(m: Member) -> Self {
        MemberInfo {
            project: m.project,
            user: m.user,
            role: role_of(m.role).as_str().into(),
        }
    }
}

impl From<berth_storage::Robot> for RobotInfo {
    fn from(r: berth_storage::Robot) -> Self {
        let active = !r.revoked && r.expires_at.is_none_or(|e| now() < e);
        RobotInfo {
            name: r.name,
            project: r.project,
            push: r.can_push,
            expires_at: r.expires_at,
            revoked: r.revoked,
            active,
            created_at: r.created_at,
            description: r.description,
        }
    }
}

impl From<AuditEvent> for AuditEntry {
    fn from(e: AuditEvent) -> Self {
        AuditEntry {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            resource: e.resource,
            client_addr: e.client_addr,
            detail: e.detail,
        }
    }
}

/// The stored form of a policy role.
pub fn project_role(r: Role) -> ProjectRole {
    match r {
        Role::ProjectAdmin => ProjectRole::ProjectAdmin,
        Role::Maintainer => ProjectRole::Maintainer,
        Role::Developer => ProjectRole::Developer,
        Role::Guest => ProjectRole::Guest,
    }
}

/// Parse a role name (`project_admin`, `maintainer`, `developer`, `guest`), or a 400.
pub fn parse_role(s: &str) -> ApiResult<Role> {
    s.parse::<Role>().map_err(|e| bad_request(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

/// A project name: one repository path component.
/// The names of registries, replication rules and webhooks: 1 to 64 of `a-z 0-9 . _ -`,
/// starting with a letter or digit.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b"._-".contains(&b))
        })
}

pub fn validate_project_name(name: &str) -> ApiResult<()> {
    if name.contains('/') || berth_proto::name::validate_repository(name).is_err() {
        return Err(ApiError::new(
            ErrorCode::NameInvalid,
            format!(
                "{name:?} is not a valid project name: use lowercase letters, digits and . _ - (one path component)"
            ),
        ));
    }
    Ok(())
}

/// A user name: 1–128 printable characters without whitespace or `:` (the Basic
/// separator), not `robot$…` and not a reserved name.
pub fn validate_user_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        && !name.starts_with("robot$")
        && !name.starts_with("berth$")
        && !matches!(name, LOCAL_ADMIN | "anonymous");
    if !ok {
        return Err(bad_request(format!(
            "{name:?} is not a valid user name: 1-128 characters without spaces or ':', not starting with robot$ or berth$, not {LOCAL_ADMIN} or anonymous"
        )));
    }
    Ok(())
}

/// A robot's short name (the part after `+`): lowercase letters and digits separated by
/// single `.`, `_` or `-`, at most 64 characters.
pub fn validate_robot_name(name: &str) -> ApiResult<()> {
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes
            .iter()
            .all(|&b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && !bytes.windows(2).any(|w| !alnum(w[0]) && !alnum(w[1]));
    if !ok {
        return Err(bad_request(format!(
            "{name:?} is not a valid robot name: lowercase letters and digits, separated by single . _ or -, at most 64 characters"
        )));
    }
    Ok(())
}

/// The login name of robot `name` in `project`: `robot$<project>+<name>`.
pub fn robot_login(project: &str, name: &str) -> String {
    format!("robot${project}+{name}")
}

fn check_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(bad_request(format!(
            "the password is too short; use at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rights
// ---------------------------------------------------------------------------------------

/// A project as the caller may see it.
pub(crate) struct Access {
    project: Project,
    role: Option<Role>,
    manage: bool,
}

/// The project if the caller may see it (public, a member, its robot, a system admin);
/// 404 otherwise, whether it exists or not.
pub(crate) async fn access(auth: &Auth, caller: &Caller, name: &str) -> ApiResult<Access> {
    let missing = || not_found(format!("project {name:?} not found"));
    let project = auth.accounts.project(name).await?.ok_or_else(missing)?;
    let lookup = auth.lookup(&caller.principal, &[name]).await?;
    let role = match &caller.principal {
        Principal::User { name: user, .. } => lookup.role(user, name),
        _ => None,
    };
    let own_robot = matches!(&caller.principal, Principal::Robot(r) if r.project == name);
    if !(caller.principal.is_system_admin() || project.public || role.is_some() || own_robot) {
        return Err(missing());
    }
    let manage = can_manage_project(&caller.principal, name, &lookup);
    Ok(Access {
        project,
        role,
        manage,
    })
}

/// [`access`], and the right to manage the project, else 403.
pub(crate) async fn require_manage(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    what: &str,
) -> ApiResult<Access> {
    let a = access(auth, caller, name).await?;
    if !a.manage {
        return Err(denied(format!(
            "{} may not {what} of project {name}: that needs its project_admin role or a system administrator",
            caller.actor()
        )));
    }
    Ok(a)
}

pub(crate) fn require_system_admin(caller: &Caller, what: &str) -> ApiResult<()> {
    if caller.principal.is_anonymous() {
        return Err(unauthenticated(what));
    }
    if !caller.principal.is_system_admin() {
        return Err(denied(format!(
            "{} may not {what}: only system administrators may",
            caller.actor()
        )));
    }
    Ok(())
}

fn require_user(caller: &Caller, what: &str) -> ApiResult<()> {
    match caller.principal {
        Principal::Anonymous => Err(unauthenticated(what)),
        Principal::Robot(_) => Err(denied(format!(
            "robot accounts may not {what}; log in as a user"
        ))),
        Principal::User { .. } => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Bootstrap
// ---------------------------------------------------------------------------------------

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

/// A generated password (43 random letters and digits), for accounts created or reset
/// without one.
pub fn generate_password() -> ApiResult<String> {
    berth_auth::generate_secret().map_err(internal)
}

/// Hash a password off the async workers (Argon2 is slow on purpose).
pub async fn hash_blocking(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(internal)?
        .map_err(|e| bad_request(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Projects
// ---------------------------------------------------------------------------------------

/// Create a project; its creator (a user) becomes its project admin.
pub async fn create_project(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    public: bool,
    description: &str,
) -> ApiResult<()> {
    require_user(caller, "create projects")?;
    validate_project_name(name)?;
    auth.accounts
        .create_project(&Project {
            name: name.into(),
            public,
            description: description.into(),
            created_at: now(),
        })
        .await?;
    if let Principal::User { name: user, .. } = &caller.principal
        && !is_local_admin(caller)
    {
        auth.accounts
            .set_member(name, user, ProjectRole::ProjectAdmin)
            .await?;
    }
    let detail = if public { "public" } else { "private" };
    auth.forget_logins();
    audit(
        auth,
        caller,
        "project.create",
        &format!("project:{name}"),
        detail,
    )
    .await;
    Ok(())
}

/// The projects the caller may see: public ones, those it is a member of (a robot: its
/// own), every project for system admins. By name.
pub async fn list_projects(auth: &Auth, caller: &Caller) -> ApiResult<Vec<ProjectInfo>> {
    let roles: Vec<(String, ProjectRole)> = match &caller.principal {
        Principal::User { name, .. } => auth.accounts.projects_of(name).await?,
        _ => Vec::new(),
    };
    let role_in = |p: &str| roles.iter().find(|(n, _)| n == p).map(|(_, r)| *r);
    let own_robot_project = match &caller.principal {
        Principal::Robot(r) => Some(r.project.clone()),
        _ => None,
    };
    let admin = caller.principal.is_system_admin();
    Ok(auth
        .accounts
        .list_projects()
        .await?
        .into_iter()
        .filter_map(|p| {
            let role = role_in(&p.name);
            let visible = admin
                || p.public
                || role.is_some()
                || own_robot_project.as_deref() == Some(p.name.as_str());
            visible.then(|| ProjectInfo {
                role: role.map(|r| role_of(r).as_str().to_string()),
                ..ProjectInfo::from(p)
            })
        })
        .collect())
}

/// One project, if the caller may see it (404 otherwise).
pub async fn get_project(auth: &Auth, caller: &Caller, name: &str) -> ApiResult<ProjectInfo> {
    let a = access(auth, caller, name).await?;
    Ok(ProjectInfo {
        role: a.role.map(|r| r.as_str().to_string()),
        ..ProjectInfo::from(a.project)
    })
}

/// Change a project's visibility and/or description.
pub async fn update_project(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    public: Option<bool>,
    description: Option<String>,
) -> ApiResult<ProjectInfo> {
    require_manage(auth, caller, name, "change the settings").await?;
    let mut detail = Vec::new();
    if let Some(p) = public {
        detail.push(if p { "public" } else { "private" }.to_string());
    }
    if description.is_some() {
        detail.push("description".to_string());
    }
    auth.accounts
        .update_project(name, public, description)
        .await?;
    auth.forget_logins();
    audit(
        auth,
        caller,
        "project.update",
        &format!("project:{name}"),
        &detail.join(","),
    )
    .await;
    get_project(auth, caller, name).await
}

/// Delete a project with its members and robots; 409 while it has repositories.
pub async fn delete_project(auth: &Auth, caller: &Caller, name: &str) -> ApiResult<()> {
    require_manage(auth, caller, name, "delete the project").await?;
    let robots = auth.accounts.robots(name).await?;
    auth.accounts.delete_project(name).await?;
    if !robots.is_empty() {
        auth.forget_logins();
    }
    audit(
        auth,
        caller,
        "project.delete",
        &format!("project:{name}"),
        "",
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------------------

/// The members of a project: for its members, its robots and system admins.
pub async fn list_members(
    auth: &Auth,
    caller: &Caller,
    project: &str,
) -> ApiResult<Vec<MemberInfo>> {
    let a = access(auth, caller, project).await?;
    let own_robot = matches!(&caller.principal, Principal::Robot(r) if r.project == project);
    if !(a.role.is_some() || own_robot || caller.principal.is_system_admin()) {
        return Err(denied(format!(
            "{} may not list the members of project {project}: only its members may",
            caller.actor()
        )));
    }
    Ok(auth
        .accounts
        .members(project)
        .await?
        .into_iter()
        .map(MemberInfo::from)
        .collect())
}

/// Give `user` `role` in `project` (adding or changing the membership).
pub async fn set_member(
    auth: &Auth,
    caller: &Caller,
    project: &str,
    user: &str,
    role: Role,
) -> ApiResult<MemberInfo> {
    require_manage(auth, caller, project, "change the members").await?;
    if auth.accounts.user(user).await?.is_none() {
        return Err(not_found(format!(
            "user {user:?} not found; add it first (berth user add {user})"
        )));
    }
    auth.accounts
        .set_member(project, user, project_role(role))
        .await?;
    auth.forget_logins();
    audit(
        auth,
        caller,
        "member.set",
        &format!("project:{project}/member:{user}"),
        role.as_str(),
    )
    .await;
    Ok(MemberInfo {
        project: project.into(),
        user: user.into(),
        role: role.as_str().into(),
    })
}

/// Remove `user` from `project`.
pub async fn remove_member(
    auth: &Auth,
    caller: &Caller,
    project: &str,
    user: &str,
) -> ApiResult<()> {
    require_manage(auth, caller, project, "change the members").await?;
    auth.accounts
        .remove_member(project, user)
        .await
        .map_err(|e| match e {
            StorageError::NotFound(_) => {
                not_found(format!("{user:?} is not a member of project {project}"))
            }
            e => e.into(),
        })?;
    auth.forget_logins();
    audit(
        auth,
        caller,
        "member.remove",
        &format!("project:{project}/member:{user}"),
        "",
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------

/// Add a user. Without a password one is generated and returned (shown only once).
pub async fn add_user(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    password: Option<String>,
    admin: bool,
) -> ApiResult<NewUser> {
    require_system_admin(caller, "add users")?;
    validate_user_name(name)?;
    let (password, generated) = match password {
        Some(p) => {
            check_password(&p)?;
            (p, false)
        }
        None => (generate_password()?, true),
    };
    let hash = hash_blocking(password.clone()).await?;
    let user = User {
        name: name.into(),
        password_hash: hash,
        admin,
        created_at: now(),
        disabled: false,
    };
    auth.accounts.create_user(&user).await?;
    audit(
        auth,
        caller,
        "user.create",
        &format!("user:{name}"),
        if admin { "admin" } else { "" },
    )
    .await;
    Ok(NewUser {
        user: user.into(),
        password: generated.then_some(password),
    })
}

/// Every user, by name.
pub async fn list_users(auth: &Auth, caller: &Caller) -> ApiResult<Vec<UserInfo>> {
    require_system_admin(caller, "list users")?;
    Ok(auth
        .accounts
        .list_users()
        .await?
        .into_iter()
        .map(UserInfo::from)
        .collect())
}

async fn existing_user(auth: &Auth, name: &str) -> ApiResult<User> {
    auth.accounts
        .user(name)
        .await?
        .ok_or_else(|| not_found(format!("user {name:?} not found")))
}

/// Set a user's password (system admins for anyone; users for themselves). Ends the
/// user's sessions: remembered logins, refresh tokens and web-console sessions.
pub async fn set_password(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    password: &str,
) -> ApiResult<()> {
    let own = matches!(&caller.principal, Principal::User { name: me, .. } if me == name);
    if !own {
        require_system_admin(caller, "change other users' passwords")?;
    }
    check_password(password)?;
    existing_user(auth, name).await?;
    let hash = hash_blocking(password.to_string()).await?;
    auth.accounts.set_password(name, &hash).await?;
    auth.forget_logins();
    auth.accounts.delete_refresh_tokens_of(name).await?;
    auth.accounts.delete_sessions_of(name).await?;
    audit(auth, caller, "user.password", &format!("user:{name}"), "").await;
    Ok(())
}

/// Change a user's password and/or administrator flag (`PATCH /api/v1/users/{name}`).
/// Rights and the new password are checked before anything changes.
pub async fn update_user(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    password: Option<String>,
    admin: Option<bool>,
) -> ApiResult<UserInfo> {
    if password.is_none() && admin.is_none() {
        return Err(bad_request(
            "nothing to change; give \"password\" and/or \"admin\"",
        ));
    }
    if admin.is_some() {
        require_system_admin(caller, "grant or revoke administrator rights")?;
    }
    if let Some(p) = &password {
        let own = matches!(&caller.principal, Principal::User { name: me, .. } if me == name);
        if !own {
            require_system_admin(caller, "change other users' passwords")?;
        }
        check_password(p)?;
    }
    if let Some(a) = admin {
        set_admin(auth, caller, name, a).await?;
    }
    if let Some(p) = password {
        set_password(auth, caller, name, &p).await?;
    }
    Ok(existing_user(auth, name).await?.into())
}

async fn active_admins(auth: &Auth) -> ApiResult<Vec<String>> {
    Ok(auth
        .accounts
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.admin && !u.disabled)
        .map(|u| u.name)
        .collect())
}

fn last_admin(name: &str, admins: &[String]) -> bool {
    admins.len() <= 1 && admins.iter().any(|a| a == name)
}

/// Make a user a system administrator, or not; never the last one.
pub async fn set_admin(
    auth: &Auth,
    caller: &Caller,
    name: &str,
    admin: bool,
) -> ApiResult<UserInfo> {
    require_system_admin(caller, "grant or revoke administrator rights")?;
    let _serial = ADMIN_CHANGES.lock().await;
    existing_user(auth, name).await?;
    if !admin && last_admin(name, &active_admins(auth).await?) {
        return Err(conflict(format!(
            "{name} is the last system administrator; make another user an administrator first"
        )));
    }
    auth.accounts.set_admin(name, admin).await?;
    auth.forget_logins();
    audit(
        auth,
        caller,
        "user.admin",
        &format!("user:{name}"),
        if admin { "true" } else { "false" },
    )
    .await;
    Ok(existing_user(auth, name).await?.into())
}

/// Delete a user with their memberships and sessions; never the last administrator.
pub async fn delete_user(auth: &Auth, caller: &Caller, name: &str) -> ApiResult<()> {
    require_system_admin(caller, "delete users")?;
    let _serial = ADMIN_CHANGES.lock().await;
    existing_user(auth, name).await?;
    if last_admin(name, &active_admins(auth).await?) {
        return Err(conflict(format!(
            "{name} is the last system administrator and cannot be deleted; make another user an administrator first"
        )));
    }
    auth.accounts.delete_user(name).await?;
    auth.forget_logins();
    audit(auth, caller, "user.delete", &format!("user:{name}"), "").await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Robots
// ---------------------------------------------------------------------------------------

/// Create robot `name` in `project` (pull, or pull and push; optional lifetime). The
/// secret is in the result and nowhere else: it is stored hashed.
pub async fn create_robot(
    auth: &Auth,
    caller: &Caller,
    project: &str,
    name: &str,
    push: bool,
    expires_in_days: Option<u32>,
    description: &str,
) -> ApiResult<NewRobot> {
    require_manage(auth, caller, project, "create robot accounts").await?;
    validate_robot_name(name)?;
    let expires_at = match expires_in_days {
        None => None,
        Some(d) if (1..=MAX_ROBOT_DAYS).contains(&d) => Some(now() + i64::from(d) * 86_400),
        Some(d) => {
            return Err(bad_request(format!(
                "expires_in_days {d} is out of range; use 1 to {MAX_ROBOT_DAYS}, or none for no expiry"
            )));
        }
    };
    let secret = berth_auth::generate_secret().map_err(internal)?;
    let robot = berth_storage::Robot {
        project: project.into(),
        name: robot_login(project, name),
        secret_hash: hash_blocking(secret.clone()).await?,
        can_push: push,
        expires_at,
        revoked: false,
        created_at: now(),
        description: description.into(),
    };
    auth.accounts.create_robot(&robot).await?;
    let mut detail = if push { "pull,push" } else { "pull" }.to_string();
    if let Some(e) = expires_at {
        detail.push_str(&format!(" expires {}", format_time(e)));
    }
    audit(
        auth,
        caller,
        "robot.create",
        &format!("project:{project}/robot:{}", robot.name),
        &detail,
    )
    .await;
    Ok(NewRobot {
        robot: robot.into(),
        secret,
    })
}

/// The robots of a project (revoked and expired ones included).
pub async fn list_robots(auth: &Auth, caller: &Caller, project: &str) -> ApiResult<Vec<RobotInfo>> {
    require_manage(auth, caller, project, "list robot accounts").await?;
    Ok(auth
        .accounts
        .robots(project)
        .await?
        .into_iter()
        .map(RobotInfo::from)
        .collect())
}

/// The full login name from `robot$p+n` or, within `project`, `n`.
pub fn robot_full_name(project: Option<&str>, name: &str) -> ApiResult<String> {
    match (name.starts_with("robot$"), project) {
        (true, _) => Ok(name.to_string()),
        (false, Some(p)) => Ok(robot_login(p, name)),
        (false, None) => Err(bad_request(format!(
            "{name:?} is not a robot login name; robot names look like robot$PROJECT+NAME"
        ))),
    }
}

/// The robot named `full` (`robot$p+n`), if the caller may manage its project; 404 if
/// it does not exist or is not in `project` (when given). With a project, its rights are
/// checked first, so that non-managers cannot probe for robot names.
async fn managed_robot(
    auth: &Auth,
    caller: &Caller,
    project: Option<&str>,
    full: &str,
    what: &str,
) -> ApiResult<berth_storage::Robot> {
    let missing = || not_found(format!("robot account {full:?} not found"));
    if let Some(p) = project {
        require_manage(auth, caller, p, what).await?;
    }
    let robot = auth.accounts.robot(full).await?.ok_or_else(missing)?;
    match project {
        Some(p) if p != robot.project => Err(missing()),
        Some(_) => Ok(robot),
        None => {
            require_manage(auth, caller, &robot.project, what)
                .await
                .map_err(|e| {
                    if e.status == Some(StatusCode::NOT_FOUND) {
                        missing()
                    } else {
                        e
                    }
                })?;
            Ok(robot)
        }
    }
}

/// Revoke a robot (it stays listed, refused from now on; its refresh tokens end).
pub async fn revoke_robot(
    auth: &Auth,
    caller: &Caller,
    project: Option<&str>,
    name: &str,
) -> ApiResult<RobotInfo> {
    let full = robot_full_name(project, name)?;
    let robot = managed_robot(auth, caller, project, &full, "revoke robot accounts").await?;
    auth.accounts.revoke_robot(&full).await?;
    auth.accounts.delete_refresh_tokens_of(&full).await?;
    auth.forget_logins();
    audit(
        auth,
        caller,
        "robot.revoke",
        &format!("project:{}/robot:{full}", robot.project),
        "",
    )
    .await;
    Ok(RobotInfo {
        revoked: true,
        active: false,
        ..robot.into()
    })
}

/// Delete a robot and its refresh tokens.
pub async fn delete_robot(
    auth: &Auth,
    caller: &Caller,
    project: Option<&str>,
    name: &str,
) -> ApiResult<()> {
    let full = robot_full_name(project, name)?;
    let robot = managed_robot(auth, caller, project, &full, "delete robot accounts").await?;
    auth.accounts.delete_robot(&full).await?;
    auth.forget_logins();
    audit(
        auth,
        caller,
        "robot.delete",
        &format!("project:{}/robot:{full}", robot.project),
        "",
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Audit log, identity
// ---------------------------------------------------------------------------------------

/// Audit events matching `filter`, newest first (system administrators only).
pub async fn audit_log(
    auth: &Auth,
    caller: &Caller,
    filter: &AuditFilter,
) -> ApiResult<Vec<AuditEntry>> {
    require_system_admin(caller, "read the audit log")?;
    Ok(auth
        .accounts
        .audit_events(filter)
        .await?
        .into_iter()
        .map(AuditEntry::from)
        .collect())
}

/// Who the caller is and where it has roles.
pub async fn me(auth: &Auth, caller: &Caller) -> ApiResult<Me> {
    match &caller.principal {
        Principal::Anonymous => Err(unauthenticated("this")),
        Principal::User { name, system_admin } => Ok(Me {
            name: name.clone(),
            kind: "user".into(),
            admin: *system_admin,
            projects: if is_local_admin(caller) {
                Vec::new()
            } else {
                auth.accounts
                    .projects_of(name)
                    .await?
                    .into_iter()
                    .map(|(project, role)| Membership {
                        project,
                        role: role_of(role).as_str().into(),
                    })
                    .collect()
            },
        }),
        Principal::Robot(r) => Ok(Me {
            name: r.name.clone(),
            kind: "robot".into(),
            admin: false,
            projects: vec![Membership {
                project: r.project.clone(),
                role: match r.permission {
                    berth_auth::RobotPermission::PullPush => Role::Developer,
                    berth_auth::RobotPermission::Pull => Role::Guest,
                }
                .as_str()
                .into(),
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_auth::{SigningKey, TokenConfig, TokenService};
    use berth_storage::sqlite::SqliteMetadata;

    use super::*;

    #[test]
    fn names() {
        for ok in ["library", "team-a", "a.b_c"] {
            validate_project_name(ok).unwrap();
        }
        for bad in ["", "Team", "a/b", "-a", "a b"] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
        for ok in ["alice", "alice@example.com", "A.Smith"] {
            validate_user_name(ok).unwrap();
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            "a:b",
            "a b",
            "tab\t",
            "robot$p+n",
            LOCAL_ADMIN,
            "anonymous",
            long.as_str(),
        ] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["ci", "deploy-prod", "a.b_c-1", "x"] {
            validate_robot_name(ok).unwrap();
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "Ci",
            "a+b",
            "a$b",
            "-a",
            "a-",
            "a--b",
            "a._b",
            long.as_str(),
        ] {
            assert!(validate_robot_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(robot_login("ci-prj", "deploy"), "robot$ci-prj+deploy");
        assert_eq!(
            robot_full_name(Some("p"), "n").unwrap(),
            "robot$p+n".to_string()
        );
        assert_eq!(robot_full_name(None, "robot$p+n").unwrap(), "robot$p+n");
        assert!(robot_full_name(None, "n").is_err());
    }

    #[test]
    fn the_last_admin_rule() {
        let admins = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(last_admin("admin", &admins(&["admin"])));
        assert!(!last_admin("admin", &admins(&["admin", "bob"])));
        assert!(!last_admin("alice", &admins(&["admin"])));
        assert!(!last_admin("alice", &admins(&[])));
    }

    #[test]
    fn roles_convert_both_ways() {
        for r in Role::ALL {
            assert_eq!(role_of(project_role(r)), r);
            assert_eq!(parse_role(r.as_str()).unwrap(), r);
        }
        assert_eq!(parse_role("admin").unwrap(), Role::ProjectAdmin);
        assert_eq!(
            parse_role("owner").unwrap_err().status,
            Some(StatusCode::BAD_REQUEST)
        );
    }

    async fn auth() -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("key.pem")).unwrap();
        let auth = Auth::new(
            Arc::new(SqliteMetadata::in_memory().await.unwrap()),
            TokenService::new(key, TokenConfig::new("berth", "berth")),
            None,
            false,
            "https",
        );
        bootstrap(&auth, Some("admin-password")).await.unwrap();
        (auth, dir)
    }

    fn user(name: &str) -> Caller {
        Caller {
            principal: Principal::User {
                name: name.into(),
                system_admin: false,
            },
            token: None,
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        }
    }

    #[tokio::test]
    async fn local_admin_creates_without_becoming_a_member() {
        let (auth, _dir) = auth().await;
        let me = local_admin();
        create_project(&auth, &me, "p", false, "").await.unwrap();
        assert!(list_members(&auth, &me, "p").await.unwrap().is_empty());
        let events = audit_log(&auth, &me, &AuditFilter::default())
            .await
            .unwrap();
        assert_eq!(events[0].actor, LOCAL_ADMIN);
        assert_eq!(events[0].client_addr, "127.0.0.1");
        assert_eq!(events[0].resource, "project:p");
        assert_eq!(super::me(&auth, &me).await.unwrap().projects, Vec::new());
    }

    #[tokio::test]
    async fn private_projects_are_invisible_and_visible_ones_protected() {
        let (auth, _dir) = auth().await;
        let admin = local_admin();
        for u in ["alice", "bob"] {
            add_user(&auth, &admin, u, Some("password-1".into()), false)
                .await
                .unwrap();
        }
        create_project(&auth, &user("alice"), "secret", false, "")
            .await
            .unwrap();
        let bob = user("bob");
        let e = get_project(&auth, &bob, "secret").await.unwrap_err();
        assert_eq!(e.status, Some(StatusCode::NOT_FOUND));
        let missing = get_project(&auth, &bob, "missing").await.unwrap_err();
        assert_eq!(missing.status, e.status);
        assert_eq!(missing.code, e.code);
        let e = update_project(&auth, &bob, DEFAULT_PROJECT, Some(false), None)
            .await
            .unwrap_err();
        assert_eq!(e.status, Some(StatusCode::FORBIDDEN));
        let names: Vec<_> = list_projects(&auth, &bob)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, [DEFAULT_PROJECT]);
        let alice_view = get_project(&auth, &user("alice"), "secret").await.unwrap();
        assert_eq!(alice_view.role.as_deref(), Some("project_admin"));
        // Anonymous callers are asked to log in for anything that changes state.
        let anon = Caller::anonymous(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let e = create_project(&auth, &anon, "x", true, "")
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }
}
