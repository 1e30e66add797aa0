//! The permission model: who may do what on which repository.
//!
//! A repository's project is its first path segment ([`project_of`]: `library/nginx` →
//! `library`). A project is [`Visibility::Public`] or [`Visibility::Private`]; users hold a
//! [`Role`] per project:
//!
//! | role | actions on the project's repositories | manages members and robots |
//! |---|---|---|
//! | [`Role::Guest`] | pull | no |
//! | [`Role::Developer`] | pull, push | no |
//! | [`Role::Maintainer`] | pull, push, delete | no |
//! | [`Role::ProjectAdmin`] | `*` (everything) | yes |
//!
//! - System administrators may do everything everywhere (even on projects that do not
//!   exist yet: the server then reports the missing project itself).
//! - Anyone — anonymous included — may pull from public projects. Nobody gets anything on
//!   a private or missing project without a role, and the two cases are indistinguishable.
//! - A [`Robot`] belongs to one project and may pull, or pull and push, there (plus pull
//!   on public projects, like anyone); an expired or revoked robot gets nothing.
//! - `registry:catalog:*` goes to every authenticated principal; the caller filters the
//!   listing per repository with [`can_read`].
//!
//! [`grant`] computes what a token may carry: the intersection of the requested scopes
//! with these rules. Following Docker's token semantics it never fails — denied scopes
//! come back with fewer actions or not at all, and the registry answers 403/401 when the
//! token does not cover a request.
//!
//! The rules need two facts from the metadata store, asked through [`ProjectLookup`]. The
//! trait is synchronous: an async store can fetch the facts for [`projects_in`] the
//! requested scopes into a [`MemoryLookup`] first, then call [`grant`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::scope::{Action, Actions, ResourceType, Scope};

/// Whether anonymous clients may pull from a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    Public,
    Private,
}

/// A user's role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// pull
    Guest,
    /// pull, push
    Developer,
    /// pull, push, delete
    Maintainer,
    /// everything, and manage the project's members and robots
    ProjectAdmin,
}

impl Role {
    /// Every role, least to most powerful.
    pub const ALL: [Role; 4] = [
        Role::Guest,
        Role::Developer,
        Role::Maintainer,
        Role::ProjectAdmin,
    ];

    /// What this role may do on the project's repositories.
    pub fn actions(self) -> Actions {
        match self {
            Role::Guest => Actions::PULL,
            Role::Developer => Actions::PULL_PUSH,
            Role::Maintainer => Actions::PULL_PUSH_DELETE,
            Role::ProjectAdmin => Actions::ALL,
        }
    }

    /// Whether this role may add and remove members and robot accounts, and change the
    /// project's settings.
    pub fn can_manage_project(self) -> bool {
        self == Role::ProjectAdmin
    }

    /// The name used in configuration, the CLI and the admin API: `project_admin`,
    /// `maintainer`, `developer`, `guest`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::ProjectAdmin => "project_admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; use one of project_admin, maintainer, developer, guest")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    /// Accepts the [`Role::as_str`] names, case-insensitively, with `-` or `_`
    /// (`project-admin`, `projectAdmin` and `admin` too).
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect();
        match norm.as_str() {
            "guest" => Ok(Role::Guest),
            "developer" => Ok(Role::Developer),
            "maintainer" => Ok(Role::Maintainer),
            "projectadmin" | "admin" => Ok(Role::ProjectAdmin),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

/// What a robot account may do in its project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RobotPermission {
    Pull,
    PullPush,
}

impl RobotPermission {
    pub fn actions(self) -> Actions {
        match self {
            RobotPermission::Pull => Actions::PULL,
            RobotPermission::PullPush => Actions::PULL_PUSH,
        }
    }
}

/// A robot account, as loaded from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    /// The full login name (the token's `sub`), e.g. `robot$ci+deploy`.
    pub name: String,
    /// The one project it works in.
    pub project: String,
    pub permission: RobotPermission,
    /// Unix seconds after which it is refused; `None` for no expiry.
    pub expires_at: Option<u64>,
    pub revoked: bool,
}

impl Robot {
    /// Not revoked and not expired at `now`.
    pub fn is_active_at(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        !self.revoked && self.expires_at.is_none_or(|exp| now < exp)
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A user (password login or a token issued to one).
    User {
        name: String,
        system_admin: bool,
    },
    Robot(Robot),
}

impl Principal {
    /// The token subject: the user or robot name, `""` for anonymous.
    pub fn subject(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::User { name, .. } => name,
            Principal::Robot(r) => &r.name,
        }
    }

    pub fn is_system_admin(&self) -> bool {
        matches!(
            self,
            Principal::User {
                system_admin: true,
                ..
            }
        )
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Principal::Anonymous)
    }
}

/// The facts about projects the rules need. Implemented by the server over the metadata
/// store (or filled in advance: [`MemoryLookup`]).
pub trait ProjectLookup {
    /// The project's visibility; `None` if there is no such project.
    fn visibility(&self, project: &str) -> Option<Visibility>;
    /// `user`'s role in `project`; `None` if not a member (or no such project).
    fn role(&self, user: &str, project: &str) -> Option<Role>;
}

/// A [`ProjectLookup`] over maps, filled by the caller (e.g. from async store queries for
/// [`projects_in`] the request) or by tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryLookup {
    pub projects: HashMap<String, Visibility>,
    /// (user, project) → role
    pub roles: HashMap<(String, String), Role>,
}

impl MemoryLookup {
    pub fn new() -> MemoryLookup {
        MemoryLookup::default()
    }

    /// Add a project (builder style).
    pub fn project(mut self, name: &str, visibility: Visibility) -> MemoryLookup {
        self.projects.insert(name.to_string(), visibility);
        self
    }

    /// Give `user` `role` in `project` (builder style).
    pub fn member(mut self, user: &str, project: &str, role: Role) -> MemoryLookup {
        self.roles
            .insert((user.to_string(), project.to_string()), role);
        self
    }
}

impl ProjectLookup for MemoryLookup {
    fn visibility(&self, project: &str) -> Option<Visibility> {
        self.projects.get(project).copied()
    }

    fn role(&self, user: &str, project: &str) -> Option<Role> {
        self.roles
            .get(&(user.to_string(), project.to_string()))
            .copied()
    }
}

/// The project of a repository: its first path segment (`library/nginx` → `library`; a
/// name without `/` is its own project).
pub fn project_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

/// The distinct projects named by the repository scopes of a request, in order — what an
/// async caller must look up before calling [`grant`].
pub fn projects_in(requested: &[Scope]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for s in requested {
        if s.resource_type == ResourceType::Repository {
            let p = project_of(&s.name);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Everything `principal` may do on `repository` now.
pub fn allowed_actions(
    principal: &Principal,
    repository: &str,
    lookup: &dyn ProjectLookup,
) -> Actions {
    allowed_actions_at(principal, repository, lookup, SystemTime::now())
}

/// [`allowed_actions`] at a given time (robot expiry).
pub fn allowed_actions_at(
    principal: &Principal,
    repository: &str,
    lookup: &dyn ProjectLookup,
    now: SystemTime,
) -> Actions {
    if berth_proto::name::validate_repository(repository).is_err() {
        return Actions::NONE;
    }
    if let Principal::Robot(r) = principal
        && !r.is_active_at(now)
    {
        return Actions::NONE;
    }
    if principal.is_system_admin() {
        return Actions::ALL;
    }
    let project = project_of(repository);
    let Some(visibility) = lookup.visibility(project) else {
        return Actions::NONE;
    };
    let public = if visibility == Visibility::Public {
        Actions::PULL
    } else {
        Actions::NONE
    };
    let own = match principal {
        Principal::Anonymous => Actions::NONE,
        Principal::User { name, .. } => lookup
            .role(name, project)
            .map_or(Actions::NONE, Role::actions),
        Principal::Robot(r) if r.project == project => r.permission.actions(),
        Principal::Robot(_) => Actions::NONE,
    };
    public.union(own)
}

/// Whether `principal` may pull from `repository` (catalog, tag list and referrers
/// filtering; the source check of a cross-repository mount).
pub fn can_read(principal: &Principal, repository: &str, lookup: &dyn ProjectLookup) -> bool {
    allowed_actions(principal, repository, lookup).allows(Action::Pull)
}

/// Whether `principal` may manage `project` (settings, members, robots): project admins
/// of it and system administrators.
pub fn can_manage_project(
    principal: &Principal,
    project: &str,
    lookup: &dyn ProjectLookup,
) -> bool {
    match principal {
        Principal::User {
            system_admin: true, ..
        } => true,
        Principal::User { name, .. } => lookup
            .role(name, project)
            .is_some_and(Role::can_manage_project),
        Principal::Anonymous | Principal::Robot(_) => false,
    }
}

/// The scopes a token for `principal` may carry: for each requested scope, the requested
/// actions that are allowed; scopes left with no action are dropped. Never an error.
pub fn grant(principal: &Principal, requested: &[Scope], lookup: &dyn ProjectLookup) -> Vec<Scope> {
    grant_at(principal, requested, lookup, SystemTime::now())
}

/// [`grant`] at a given time (robot expiry).
pub fn grant_at(
    principal: &Principal,
    requested: &[Scope],
    lookup: &dyn ProjectLookup,
    now: SystemTime,
) -> Vec<Scope> {
    let authenticated = match principal {
        Principal::Anonymous => false,
        Principal::User { .. } => true,
        Principal::Robot(r) => r.is_active_at(now),
    };
    let mut out: Vec<Scope> = Vec::new();
    for scope in requested {
        let allowed = match &scope.resource_type {
            // `repository(plugin):…` is judged by its name like any repository.
            ResourceType::Repository => allowed_actions_at(principal, &scope.name, lookup, now),
            ResourceType::Registry if scope.is_catalog() && authenticated => Actions::ALL,
            ResourceType::Registry | ResourceType::Other(_) => Actions::NONE,
        };
        let actions = scope.actions.intersect(allowed);
        if actions.is_empty() {
            continue;
        }
        match out.iter_mut().find(|o| o.same_resource(scope)) {
            Some(existing) => existing.actions = existing.actions.union(actions),
            None => out.push(Scope {
                actions,
                ..scope.clone()
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::parse_scopes;
    use proptest::prelude::*;
    use std::time::Duration;

    fn lookup() -> MemoryLookup {
        MemoryLookup::new()
            .project("library", Visibility::Public)
            .project("private-prj", Visibility::Private)
            .project("other", Visibility::Private)
            .member("guest", "private-prj", Role::Guest)
            .member("dev", "private-prj", Role::Developer)
            .member("maint", "private-prj", Role::Maintainer)
            .member("padmin", "private-prj", Role::ProjectAdmin)
            .member("dev", "library", Role::Developer)
    }

    fn user(name: &str) -> Principal {
        Principal::User {
            name: name.into(),
            system_admin: false,
        }
    }

    fn admin() -> Principal {
        Principal::User {
            name: "admin".into(),
            system_admin: true,
        }
    }

    fn robot(project: &str, permission: RobotPermission) -> Robot {
        Robot {
            name: format!("robot${project}+ci"),
            project: project.into(),
            permission,
            expires_at: None,
            revoked: false,
        }
    }

    fn granted(p: &Principal, req: &str) -> String {
        crate::scope::format_scopes(&grant(p, &parse_scopes(req).unwrap(), &lookup()))
    }

    const ALL_PRIVATE: &str = "repository:private-prj/nginx:pull,push,delete";

    #[test]
    fn project_of_is_the_first_segment() {
        assert_eq!(project_of("library/nginx"), "library");
        assert_eq!(project_of("private-prj/team/app"), "private-prj");
        assert_eq!(project_of("nginx"), "nginx");
        assert_eq!(project_of(""), "");
        assert_eq!(
            projects_in(
                &parse_scopes(
                    "repository:a/x:pull repository:b/y:pull repository:a/z:push registry:catalog:*"
                )
                .unwrap()
            ),
            vec!["a", "b"]
        );
    }

    #[test]
    fn roles() {
        assert_eq!(
            granted(&user("guest"), ALL_PRIVATE),
            "repository:private-prj/nginx:pull"
        );
        assert_eq!(
            granted(&user("dev"), ALL_PRIVATE),
            "repository:private-prj/nginx:pull,push"
        );
        assert_eq!(
            granted(&user("maint"), ALL_PRIVATE),
            "repository:private-prj/nginx:pull,push,delete"
        );
        assert_eq!(
            granted(&user("padmin"), ALL_PRIVATE),
            "repository:private-prj/nginx:pull,push,delete"
        );
        // `*` is granted as `*` only to those who may do everything.
        let star = "repository:private-prj/nginx:*";
        assert_eq!(granted(&user("padmin"), star), star);
        assert_eq!(granted(&admin(), star), star);
        assert_eq!(
            granted(&user("maint"), star),
            "repository:private-prj/nginx:pull,push,delete"
        );
        assert_eq!(
            granted(&user("guest"), star),
            "repository:private-prj/nginx:pull"
        );
        assert!(Role::ProjectAdmin.can_manage_project());
        assert!(!Role::Maintainer.can_manage_project());
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert_eq!("projectAdmin".parse::<Role>(), Ok(Role::ProjectAdmin));
        assert_eq!("Project-Admin".parse::<Role>(), Ok(Role::ProjectAdmin));
        assert!(
            "owner"
                .parse::<Role>()
                .unwrap_err()
                .to_string()
                .contains("project_admin")
        );
    }

    #[test]
    fn non_members_and_anonymous() {
        // Private project: non-members and anonymous get nothing.
        assert_eq!(granted(&user("stranger"), ALL_PRIVATE), "");
        assert_eq!(granted(&Principal::Anonymous, ALL_PRIVATE), "");
        // Public project: pull for everyone, push only with a role.
        let lib = "repository:library/nginx:pull,push";
        assert_eq!(
            granted(&Principal::Anonymous, lib),
            "repository:library/nginx:pull"
        );
        assert_eq!(
            granted(&user("stranger"), lib),
            "repository:library/nginx:pull"
        );
        assert_eq!(granted(&user("dev"), lib), lib);
        assert_eq!(
            granted(&Principal::Anonymous, "repository:library/nginx:delete"),
            ""
        );
    }

    #[test]
    fn private_and_missing_projects_look_the_same() {
        for p in [Principal::Anonymous, user("stranger"), user("guest")] {
            assert_eq!(
                granted(&p, "repository:other/secret:pull"),
                granted(&p, "repository:nope/secret:pull"),
            );
            assert!(!can_read(&p, "other/secret", &lookup()));
            assert!(!can_read(&p, "nope/secret", &lookup()));
        }
    }

    #[test]
    fn system_admins_do_everything() {
        assert_eq!(granted(&admin(), ALL_PRIVATE), ALL_PRIVATE);
        assert_eq!(
            granted(&admin(), "repository:not-yet/app:push"),
            "repository:not-yet/app:push"
        );
        assert!(can_manage_project(&admin(), "anything", &lookup()));
        assert!(can_manage_project(
            &user("padmin"),
            "private-prj",
            &lookup()
        ));
        assert!(!can_manage_project(&user("padmin"), "library", &lookup()));
        assert!(!can_manage_project(
            &user("maint"),
            "private-prj",
            &lookup()
        ));
        assert!(!can_manage_project(
            &Principal::Anonymous,
            "library",
            &lookup()
        ));
        assert!(!can_manage_project(
            &Principal::Robot(robot("private-prj", RobotPermission::PullPush)),
            "private-prj",
            &lookup()
        ));
    }

    #[test]
    fn robots() {
        let r = Principal::Robot(robot("private-prj", RobotPermission::Pull));
        assert_eq!(
            granted(&r, ALL_PRIVATE),
            "repository:private-prj/nginx:pull"
        );
        let r = Principal::Robot(robot("private-prj", RobotPermission::PullPush));
        assert_eq!(
            granted(&r, ALL_PRIVATE),
            "repository:private-prj/nginx:pull,push"
        );
        assert_eq!(r.subject(), "robot$private-prj+ci");
        // Other private projects: nothing. Public projects: pull, like anyone.
        assert_eq!(granted(&r, "repository:other/x:pull"), "");
        assert_eq!(
            granted(&r, "repository:library/x:pull,push"),
            "repository:library/x:pull"
        );
        assert_eq!(granted(&r, "registry:catalog:*"), "registry:catalog:*");
    }

    #[test]
    fn expired_and_revoked_robots_get_nothing() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut rb = robot("private-prj", RobotPermission::PullPush);
        rb.expires_at = Some(1_000_001);
        let req = parse_scopes(
            "repository:private-prj/a:pull repository:library/a:pull registry:catalog:*",
        )
        .unwrap();
        assert_eq!(
            grant_at(&Principal::Robot(rb.clone()), &req, &lookup(), now).len(),
            3
        );
        rb.expires_at = Some(1_000_000);
        assert!(!rb.is_active_at(now));
        assert!(grant_at(&Principal::Robot(rb.clone()), &req, &lookup(), now).is_empty());
        rb.expires_at = None;
        rb.revoked = true;
        assert!(grant_at(&Principal::Robot(rb.clone()), &req, &lookup(), now).is_empty());
        assert!(!can_read(&Principal::Robot(rb), "library/a", &lookup()));
    }

    #[test]
    fn catalog() {
        assert_eq!(granted(&Principal::Anonymous, "registry:catalog:*"), "");
        assert_eq!(
            granted(&user("stranger"), "registry:catalog:*"),
            "registry:catalog:*"
        );
        assert_eq!(
            granted(&admin(), "registry:catalog:*"),
            "registry:catalog:*"
        );
        // Other registry resources and unknown types are never granted.
        assert_eq!(granted(&admin(), "registry:config:*"), "");
        assert_eq!(granted(&admin(), "foo:bar:*"), "");
        // Catalog filtering by the caller.
        let l = lookup();
        let repos = ["library/nginx", "private-prj/nginx", "other/x"];
        let visible: Vec<_> = repos
            .iter()
            .filter(|r| can_read(&user("guest"), r, &l))
            .collect();
        assert_eq!(visible, [&"library/nginx", &"private-prj/nginx"]);
    }

    #[test]
    fn invalid_names_are_never_granted() {
        for name in [
            "Library/nginx",
            "library/../x",
            "library//x",
            "library/x/",
            "library/X",
        ] {
            let req = vec![Scope::repository(name, Actions::PULL)];
            assert!(grant(&admin(), &req, &lookup()).is_empty(), "{name}");
            assert!(!can_read(&Principal::Anonymous, name, &lookup()));
        }
    }

    #[test]
    fn plugin_class_and_merging() {
        assert_eq!(
            granted(
                &Principal::Anonymous,
                "repository(plugin):library/sshfs:pull"
            ),
            "repository(plugin):library/sshfs:pull"
        );
        let req = vec![
            Scope::repository("private-prj/a", Actions::PULL),
            Scope::repository("private-prj/a", Actions::of(&[Action::Push])),
        ];
        assert_eq!(
            grant(&user("dev"), &req, &lookup()),
            vec![Scope::repository("private-prj/a", Actions::PULL_PUSH)]
        );
        assert!(grant(&user("dev"), &[], &lookup()).is_empty());
    }

    fn principal() -> impl Strategy<Value = Principal> {
        prop_oneof![
            Just(Principal::Anonymous),
            prop::sample::select(vec!["guest", "dev", "maint", "padmin", "stranger"])
                .prop_map(user),
            Just(admin()),
            prop::sample::select(vec!["private-prj", "other", "library"])
                .prop_map(|p| Principal::Robot(robot(p, RobotPermission::PullPush))),
        ]
    }

    proptest! {
        #[test]
        fn grant_is_a_subset_of_the_request_and_of_the_rules(
            p in principal(),
            scopes in prop::collection::vec(
                (
                    prop::sample::select(vec!["library", "private-prj", "other", "missing"]),
                    "[a-z]{1,5}",
                    prop::collection::vec(prop::sample::select(Action::EVERY.to_vec()), 0..4),
                ),
                0..6,
            ),
        ) {
            let l = lookup();
            let req: Vec<Scope> = scopes
                .into_iter()
                .map(|(proj, repo, acts)| Scope::repository(format!("{proj}/{repo}"), Actions::of(&acts)))
                .collect();
            let out = grant(&p, &req, &l);
            for g in &out {
                prop_assert!(!g.actions.is_empty());
                let asked = req.iter().filter(|r| r.same_resource(g)).fold(Actions::NONE, |a, r| a.union(r.actions));
                let allowed = allowed_actions(&p, &g.name, &l);
                for a in Action::EVERY {
                    if g.actions.allows(a) {
                        prop_assert!(asked.allows(a) && allowed.allows(a), "{:?} {:?} {:?}", g, asked, allowed);
                    }
                }
                // Write access implies read access for every role.
                prop_assert!(!g.actions.allows(Action::Push) || allowed.allows(Action::Pull));
            }
            // Anonymous principals only ever get pull on public projects.
            if p.is_anonymous() {
                for g in &out {
                    prop_assert_eq!(g.actions, Actions::PULL);
                    prop_assert_eq!(project_of(&g.name), "library");
                }
            }
        }
    }
}
