//! The access-control boundary: projects, users, project memberships, robot accounts,
//! refresh tokens and the audit log.
//!
//! This layer stores; it decides nothing. Password and robot secrets arrive already hashed
//! (PHC strings made by the auth crate) and are returned as stored; refresh tokens are
//! stored and looked up by a hash of their id, never by the id itself. Which role may do
//! what, and whether an expired robot or token is still accepted, is the caller's business.
//!
//! Timestamps are seconds since the Unix epoch, given by the caller.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;

use crate::StorageResult;

/// Whether anonymous clients may pull from a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    /// `"public"` or `"private"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    pub fn is_public(self) -> bool {
        self == Visibility::Public
    }
}

impl From<bool> for Visibility {
    /// `true` is [`Visibility::Public`].
    fn from(public: bool) -> Self {
        if public {
            Visibility::Public
        } else {
            Visibility::Private
        }
    }
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Visibility {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Visibility::Public),
            "private" => Ok(Visibility::Private),
            other => Err(UnknownName {
                kind: "visibility",
                name: other.to_owned(),
            }),
        }
    }
}

/// A string that names no [`Visibility`] or [`ProjectRole`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

/// A project: the first path segment of its repositories (`library` in `library/nginx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    /// Anonymous clients may pull (see [`Project::visibility`]).
    pub public: bool,
    pub description: String,
    pub created_at: i64,
}

impl Project {
    pub fn visibility(&self) -> Visibility {
        Visibility::from(self.public)
    }
}

/// A person's account. `Debug` does not print the password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// A PHC string (`$argon2id$…`) made by the auth crate; never the password itself.
    pub password_hash: String,
    /// System administrator: sees and does everything.
    pub admin: bool,
    pub created_at: i64,
    pub disabled: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("admin", &self.admin)
            .field("created_at", &self.created_at)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// A user's role in one project, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectRole {
    /// Manages the project's members and robots.
    ProjectAdmin,
    /// Push and delete.
    Maintainer,
    /// Push.
    Developer,
    /// Pull.
    Guest,
}

impl ProjectRole {
    /// Every role, from most to least powerful.
    pub const ALL: [ProjectRole; 4] = [
        ProjectRole::ProjectAdmin,
        ProjectRole::Maintainer,
        ProjectRole::Developer,
        ProjectRole::Guest,
    ];

    /// The stored name: `"admin"`, `"maintainer"`, `"developer"` or `"guest"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectRole::ProjectAdmin => "admin",
            ProjectRole::Maintainer => "maintainer",
            ProjectRole::Developer => "developer",
            ProjectRole::Guest => "guest",
        }
    }
}

impl fmt::Display for ProjectRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProjectRole {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProjectRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "project role",
                name: s.to_owned(),
            })
    }
}

/// One user's role in one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub project: String,
    pub user: String,
    pub role: ProjectRole,
}

/// A robot account of one project. `Debug` does not print the secret hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Robot {
    pub project: String,
    /// Unique across the registry, e.g. `robot$library+ci` (the format is the caller's).
    pub name: String,
    /// A PHC string of the generated secret; never the secret itself.
    pub secret_hash: String,
    /// Pull and push; otherwise pull only.
    pub can_push: bool,
    /// Seconds since the epoch after which the caller refuses the robot; None = never.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub created_at: i64,
    pub description: String,
}

impl fmt::Debug for Robot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Robot")
            .field("project", &self.project)
            .field("name", &self.name)
            .field("secret_hash", &"<redacted>")
            .field("can_push", &self.can_push)
            .field("expires_at", &self.expires_at)
            .field("revoked", &self.revoked)
            .field("created_at", &self.created_at)
            .field("description", &self.description)
            .finish()
    }
}

/// One audit-log entry: who did what, to what, when and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Assigned by the store on [`AccountStore::audit`] (ignored there); increasing in
    /// insertion order and never reused.
    pub id: i64,
    pub at: i64,
    /// User or robot name; `""` or `"anonymous"` as the caller chooses.
    pub actor: String,
    /// `"push"`, `"delete"`, `"login"`, `"login_failed"`, `"project.create"`, …
    pub action: String,
    /// What was acted on, e.g. `library/nginx:latest` or `project:library`.
    pub resource: String,
    pub client_addr: String,
    /// Free text or JSON; never a credential.
    pub detail: String,
}

/// Which audit events to return: every `Some` field must match. Results are newest first
/// (by id), at most `min(limit, AuditFilter::MAX_LIMIT)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action.
    pub action: Option<String>,
    /// Resources starting with this string (byte-wise, no wildcards).
    pub resource_prefix: Option<String>,
    /// `at >= since`.
    pub since: Option<i64>,
    /// `at < until`.
    pub until: Option<i64>,
    /// `id < before_id`: the next page after a page whose last (oldest) event had this id.
    pub before_id: Option<i64>,
    /// At most this many events (0 returns none); capped at [`AuditFilter::MAX_LIMIT`].
    pub limit: u32,
}

impl AuditFilter {
    /// The most events one query returns.
    pub const MAX_LIMIT: u32 = 1000;
    /// The limit of [`AuditFilter::default`].
    pub const DEFAULT_LIMIT: u32 = 100;
}

impl Default for AuditFilter {
    /// No conditions, the [`AuditFilter::DEFAULT_LIMIT`] newest events.
    fn default() -> Self {
        AuditFilter {
            actor: None,
            action: None,
            resource_prefix: None,
            since: None,
            until: None,
            before_id: None,
            limit: AuditFilter::DEFAULT_LIMIT,
        }
    }
}

/// An OAuth2 refresh token, stored by a hash of its id (the id itself is only ever in the
/// client's hands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub id_hash: String,
    /// The user (or robot) the token was issued to.
    pub subject: String,
    pub expires_at: i64,
}

/// A signed-in web-console session, stored by a hash of its id (the id itself is only in
/// the browser's cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub id_hash: String,
    /// The user signed in.
    pub username: String,
    pub created_at: i64,
    /// Seconds since the epoch after which the caller refuses it.
    pub expires_at: i64,
}

/// Access-control persistence. Errors: `NotFound` for a missing project, user, member,
/// robot; `AlreadyExists` for a duplicate name; `Conflict` for a project that still has
/// repositories. Listings are ordered by name.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Create a project; `AlreadyExists` if one has this name.
    async fn create_project(&self, p: &Project) -> StorageResult<()>;

    async fn project(&self, name: &str) -> StorageResult<Option<Project>>;

    /// Every project, by name.
    async fn list_projects(&self) -> StorageResult<Vec<Project>>;

    /// Change the given fields; `NotFound` if the project does not exist.
    async fn update_project(
        &self,
        name: &str,
        public: Option<bool>,
        description: Option<String>,
    ) -> StorageResult<()>;

    /// Delete a project with its memberships and robots (and the robots' refresh tokens).
    /// `NotFound` if absent; `Conflict` while any repository `name/…` exists.
    async fn delete_project(&self, name: &str) -> StorageResult<()>;

    /// Create a user; `AlreadyExists` if one has this name.
    async fn create_user(&self, u: &User) -> StorageResult<()>;

    async fn user(&self, name: &str) -> StorageResult<Option<User>>;

    /// Every user, by name.
    async fn list_users(&self) -> StorageResult<Vec<User>>;

    /// Users by name, skipping the first `offset`, at most `limit` (a page of the web
    /// console's user list).
    async fn users_page(&self, offset: u64, limit: u32) -> StorageResult<Vec<User>>;

    /// Replace the password hash; `NotFound` if the user does not exist. Refresh tokens
    /// stay (call [`AccountStore::delete_refresh_tokens_of`] to end sessions).
    async fn set_password(&self, name: &str, password_hash: &str) -> StorageResult<()>;

    /// `NotFound` if the user does not exist.
    async fn set_admin(&self, name: &str, admin: bool) -> StorageResult<()>;

    /// Delete a user with their memberships and refresh tokens; `NotFound` if absent.
    async fn delete_user(&self, name: &str) -> StorageResult<()>;

    async fn count_users(&self) -> StorageResult<u64>;

    /// Give `user` `role` in `project`, replacing any role it had there; `NotFound` if the
    /// project or the user does not exist.
    async fn set_member(&self, project: &str, user: &str, role: ProjectRole) -> StorageResult<()>;

    /// `NotFound` if `user` is not a member of `project`.
    async fn remove_member(&self, project: &str, user: &str) -> StorageResult<()>;

    /// Members of `project` by user name (empty for a missing project).
    async fn members(&self, project: &str) -> StorageResult<Vec<Member>>;

    async fn role_of(&self, project: &str, user: &str) -> StorageResult<Option<ProjectRole>>;

    /// `(project, role)` of every membership of `user`, by project name.
    async fn projects_of(&self, user: &str) -> StorageResult<Vec<(String, ProjectRole)>>;

    /// Create a robot; `NotFound` if its project does not exist, `AlreadyExists` if a robot
    /// has this name.
    async fn create_robot(&self, r: &Robot) -> StorageResult<()>;

    async fn robot(&self, name: &str) -> StorageResult<Option<Robot>>;

    /// Robots of `project` by name (revoked and expired ones included).
    async fn robots(&self, project: &str) -> StorageResult<Vec<Robot>>;

    /// Mark revoked (idempotent); `NotFound` if absent.
    async fn revoke_robot(&self, name: &str) -> StorageResult<()>;

    /// Delete a robot and its refresh tokens; `NotFound` if absent.
    async fn delete_robot(&self, name: &str) -> StorageResult<()>;

    /// Store a refresh token; `AlreadyExists` if its id hash is taken. The backend may
    /// drop tokens whose `expires_at` has passed.
    async fn put_refresh_token(&self, t: &RefreshToken) -> StorageResult<()>;

    /// The token with this id hash, expired or not (the caller checks `expires_at`).
    async fn refresh_token(&self, id_hash: &str) -> StorageResult<Option<RefreshToken>>;

    /// Delete every refresh token of `subject` (idempotent).
    async fn delete_refresh_tokens_of(&self, subject: &str) -> StorageResult<()>;

    /// Store a console session; `NotFound` if its user does not exist, `AlreadyExists` if
    /// its id hash is taken. The backend may drop sessions whose `expires_at` has passed.
    /// Deleting the user deletes its sessions.
    async fn create_session(&self, s: &ConsoleSession) -> StorageResult<()>;

    /// The session with this id hash, expired or not (the caller checks `expires_at`).
    async fn session(&self, id_hash: &str) -> StorageResult<Option<ConsoleSession>>;

    /// Delete one session (idempotent).
    async fn delete_session(&self, id_hash: &str) -> StorageResult<()>;

    /// Delete every session of `username` (idempotent).
    async fn delete_sessions_of(&self, username: &str) -> StorageResult<()>;

    /// Append an event; its `id` is ignored and assigned by the store.
    async fn audit(&self, e: &AuditEvent) -> StorageResult<()>;

    /// Events matching `f`, newest (highest id) first, at most
    /// `min(f.limit, AuditFilter::MAX_LIMIT)`.
    async fn audit_events(&self, f: &AuditFilter) -> StorageResult<Vec<AuditEvent>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        let names: Vec<&str> = ProjectRole::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["admin", "maintainer", "developer", "guest"]);
        for role in ProjectRole::ALL {
            assert_eq!(role.as_str().parse::<ProjectRole>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        for bad in ["", "Admin", "owner", "project_admin", " guest"] {
            let e = bad.parse::<ProjectRole>().expect_err(bad);
            assert_eq!(e.name, bad);
            assert!(e.to_string().contains("project role"), "{e}");
        }
    }

    #[test]
    fn visibility() {
        assert_eq!(Visibility::from(true), Visibility::Public);
        assert_eq!(Visibility::from(false), Visibility::Private);
        assert!(Visibility::Public.is_public());
        for v in [Visibility::Public, Visibility::Private] {
            assert_eq!(v.as_str().parse::<Visibility>(), Ok(v));
        }
        assert!("PUBLIC".parse::<Visibility>().is_err());
        let p = Project {
            name: "library".into(),
            public: true,
            description: String::new(),
            created_at: 0,
        };
        assert_eq!(p.visibility(), Visibility::Public);
    }

    #[test]
    fn debug_hides_hashes() {
        let u = User {
            name: "alice".into(),
            password_hash: "$argon2id$secret-hash".into(),
            admin: false,
            created_at: 0,
            disabled: false,
        };
        let r = Robot {
            project: "library".into(),
            name: "robot$library+ci".into(),
            secret_hash: "$argon2id$secret-hash".into(),
            can_push: true,
            expires_at: None,
            revoked: false,
            created_at: 0,
            description: String::new(),
        };
        for s in [format!("{u:?}"), format!("{r:?}")] {
            assert!(!s.contains("secret-hash"), "{s}");
            assert!(s.contains("<redacted>"), "{s}");
        }
    }

    #[test]
    fn audit_filter_default() {
        let f = AuditFilter::default();
        assert_eq!(f.limit, AuditFilter::DEFAULT_LIMIT);
        assert!(f.actor.is_none() && f.before_id.is_none());
    }
}
