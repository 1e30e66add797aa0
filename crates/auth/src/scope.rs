//! Docker token scopes: `repository:library/nginx:pull,push`, `registry:catalog:*`.
//!
//! Grammar (Docker token authentication, "Token Scope Documentation"):
//!
//! ```text
//! scope          := resourcescope [ ' ' resourcescope ]*
//! resourcescope  := resourcetype ":" resourcename ":" action [ ',' action ]*
//! resourcetype   := resourcetypevalue [ '(' resourcetypevalue ')' ]
//! resourcetypevalue := /[a-z0-9]+/
//! resourcename   := [ hostname '/' ] component [ '/' component ]*   (may contain ':')
//! action         := /[a-z]*/ | '*'
//! ```
//!
//! Because a resource name may contain `:` (a `host:port` prefix), the type is everything
//! before the first `:` and the actions everything after the last one.
//!
//! Parsing is tolerant where clients differ and strict where it matters for safety:
//! - several scopes in one `scope` parameter (space separated) and several `scope`
//!   parameters are both accepted ([`parse_scope_params`]); repeated resources are merged;
//! - a resource class (`repository(plugin):…`) is kept in [`Scope::class`];
//! - unknown actions (e.g. Harbor's `scanner-pull`) are dropped — they are never granted
//!   anyway — and empty action lists are allowed;
//! - names are never empty and never contain whitespace, control characters, `"` or `\`,
//!   so a formatted scope can always be put in a quoted header parameter;
//! - sizes are bounded ([`MAX_SCOPE_LEN`], [`MAX_SCOPES`]).
//!
//! [`Actions`] is a small set. `*` ([`Action::All`]) means every action: a set holding it
//! [`allows`](Actions::allows) pull, push and delete too, and it is kept alone (`pull,*`
//! is normalised to `*`).

use std::fmt;

/// Longest accepted single scope (`type:name:actions`), in bytes.
pub const MAX_SCOPE_LEN: usize = 1024;
/// Most scopes accepted in one token request (over all `scope` parameters), before merging.
pub const MAX_SCOPES: usize = 64;

/// One action of a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `pull`: read manifests, blobs, tags, referrers.
    Pull,
    /// `push`: upload blobs, put manifests and tags.
    Push,
    /// `delete`: delete manifests, tags, blobs.
    Delete,
    /// `*`: every action (also the catalog action in `registry:catalog:*`).
    All,
}

impl Action {
    /// Every action, in canonical order.
    pub const EVERY: [Action; 4] = [Action::Pull, Action::Push, Action::Delete, Action::All];

    /// The wire form: `pull`, `push`, `delete`, `*`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::All => "*",
        }
    }

    /// Parse the wire form; `None` for actions Berth does not know.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "*" => Some(Action::All),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
            Action::All => 8,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Action`]s, normalised so that `*` stands alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const NONE: Actions = Actions(0);
    /// `pull`.
    pub const PULL: Actions = Actions(1);
    /// `pull,push`.
    pub const PULL_PUSH: Actions = Actions(1 | 2);
    /// `pull,push,delete`.
    pub const PULL_PUSH_DELETE: Actions = Actions(1 | 2 | 4);
    /// `*`.
    pub const ALL: Actions = Actions(8);

    /// The set of the given actions (normalised: with `*`, only `*` is kept).
    pub fn of(actions: &[Action]) -> Actions {
        let mut set = Actions::NONE;
        for &a in actions {
            set.insert(a);
        }
        set
    }

    /// Add an action (adding `*` removes the others; adding to `*` changes nothing).
    pub fn insert(&mut self, action: Action) {
        if self.0 & Action::All.bit() != 0 {
            return;
        }
        if action == Action::All {
            self.0 = Action::All.bit();
        } else {
            self.0 |= action.bit();
        }
    }

    /// Whether the set literally holds `action` (`*` holds only `*`).
    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    /// Whether the set permits `action`: a set with `*` permits everything.
    pub fn allows(self, action: Action) -> bool {
        self.contains(Action::All) || self.contains(action)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions of `self` (as requested) that `allowed` permits. A requested `*` is
    /// granted as `*` only if `allowed` has `*`; otherwise it stands for each concrete
    /// action `allowed` permits.
    pub fn intersect(self, allowed: Actions) -> Actions {
        if self.contains(Action::All) {
            return if allowed.contains(Action::All) {
                Actions::ALL
            } else {
                allowed
            };
        }
        let mut out = Actions::NONE;
        for a in self.iter() {
            if allowed.allows(a) {
                out.insert(a);
            }
        }
        out
    }

    /// The union of two sets.
    pub fn union(self, other: Actions) -> Actions {
        let mut out = self;
        for a in other.iter() {
            out.insert(a);
        }
        out
    }

    /// The actions in canonical order (`pull`, `push`, `delete`, `*`).
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::EVERY.into_iter().filter(move |a| self.contains(*a))
    }

    /// The actions as wire strings, for the token's `access` claim.
    pub fn to_strings(self) -> Vec<String> {
        self.iter().map(|a| a.as_str().to_string()).collect()
    }
}

impl fmt::Display for Actions {
    /// Comma separated, canonical order: `pull,push`; empty for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(a.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actions({self})")
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Actions {
        let mut set = Actions::NONE;
        for a in iter {
            set.insert(a);
        }
        set
    }
}

/// The kind of resource a scope names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// `repository`
    Repository,
    /// `registry` (only `registry:catalog:*` is meaningful)
    Registry,
    /// Any other `[a-z0-9]+` type; parsed, never granted.
    Other(String),
}

impl ResourceType {
    /// The wire form.
    pub fn as_str(&self) -> &str {
        match self {
            ResourceType::Repository => "repository",
            ResourceType::Registry => "registry",
            ResourceType::Other(s) => s,
        }
    }

    /// From the wire form; `None` unless it is `[a-z0-9]+`.
    pub fn parse(s: &str) -> Option<ResourceType> {
        if !is_type_value(s) {
            return None;
        }
        Some(match s {
            "repository" => ResourceType::Repository,
            "registry" => ResourceType::Registry,
            other => ResourceType::Other(other.to_string()),
        })
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource scope: a type (with an optional class), a name and actions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub resource_type: ResourceType,
    /// The class in `repository(plugin):…`; `None` for plain types.
    pub class: Option<String>,
    pub name: String,
    pub actions: Actions,
}

/// Name of the catalog resource, in `registry:catalog:*`.
pub const CATALOG: &str = "catalog";

impl Scope {
    /// `repository:NAME:ACTIONS`.
    pub fn repository(name: impl Into<String>, actions: Actions) -> Scope {
        Scope {
            resource_type: ResourceType::Repository,
            class: None,
            name: name.into(),
            actions,
        }
    }

    /// `registry:catalog:*`.
    pub fn catalog() -> Scope {
        Scope {
            resource_type: ResourceType::Registry,
            class: None,
            name: CATALOG.to_string(),
            actions: Actions::ALL,
        }
    }

    /// Whether this is `registry:catalog:…`.
    pub fn is_catalog(&self) -> bool {
        self.resource_type == ResourceType::Registry && self.class.is_none() && self.name == CATALOG
    }

    /// Parse one scope, `type[(class)]:name:actions`.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong {
                len: s.len(),
                max: MAX_SCOPE_LEN,
            });
        }
        let invalid = |reason: &'static str| ScopeError::Invalid {
            scope: s.to_string(),
            reason,
        };
        let (type_part, rest) = s
            .split_once(':')
            .ok_or_else(|| invalid("it has no ':' separators"))?;
        let (name, actions_part) = rest
            .rsplit_once(':')
            .ok_or_else(|| invalid("it has only one ':' separator"))?;

        let (type_str, class) = match type_part.split_once('(') {
            None => (type_part, None),
            Some((t, c)) => {
                let c = c
                    .strip_suffix(')')
                    .ok_or_else(|| invalid("the resource class is missing its ')'"))?;
                if !is_type_value(c) {
                    return Err(invalid("the resource class is not [a-z0-9]+"));
                }
                (t, Some(c.to_string()))
            }
        };
        let resource_type = ResourceType::parse(type_str)
            .ok_or_else(|| invalid("the resource type is not [a-z0-9]+"))?;
        if name.is_empty() {
            return Err(invalid("the resource name is empty"));
        }
        if !name.chars().all(is_name_char) {
            return Err(invalid(
                "the resource name contains whitespace, a control character, '\"' or '\\'",
            ));
        }
        let mut actions = Actions::NONE;
        for a in actions_part.split(',') {
            if !a.chars().all(is_action_char) {
                return Err(invalid(
                    "an action contains a character other than [a-z0-9*_-]",
                ));
            }
            if let Some(a) = Action::parse(a) {
                actions.insert(a);
            }
        }
        Ok(Scope {
            resource_type,
            class,
            name: name.to_string(),
            actions,
        })
    }

    /// Whether `other` names the same resource (type, class and name), ignoring actions.
    pub fn same_resource(&self, other: &Scope) -> bool {
        self.resource_type == other.resource_type
            && self.class == other.class
            && self.name == other.name
    }
}

impl fmt::Display for Scope {
    /// `type[(class)]:name:actions` — the inverse of [`Scope::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource_type.as_str())?;
        if let Some(class) = &self.class {
            write!(f, "({class})")?;
        }
        write!(f, ":{}:{}", self.name, self.actions)
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        Scope::parse(s)
    }
}

/// A scope that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "invalid scope {scope:?}: {reason}; a scope looks like \"repository:team/app:pull,push\" \
         or \"registry:catalog:*\""
    )]
    Invalid { scope: String, reason: &'static str },
    #[error(
        "a scope of {len} bytes is longer than the {max} allowed; request fewer or shorter names"
    )]
    TooLong { len: usize, max: usize },
    #[error("more than {max} scopes were requested in one token request; request fewer at a time")]
    TooMany { max: usize },
}

/// Parse one `scope` parameter value, which may hold several space-separated scopes.
/// Repeated resources are merged ([`merge_scopes`]).
pub fn parse_scopes(value: &str) -> Result<Vec<Scope>, ScopeError> {
    parse_scope_params([value])
}

/// Parse every `scope` parameter of a token request (each may hold several
/// space-separated scopes), merging repeated resources, in order of first appearance.
pub fn parse_scope_params<'a, I>(values: I) -> Result<Vec<Scope>, ScopeError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut out = Vec::new();
    for value in values {
        for part in value.split(' ').filter(|p| !p.is_empty()) {
            if out.len() >= MAX_SCOPES {
                return Err(ScopeError::TooMany { max: MAX_SCOPES });
            }
            out.push(Scope::parse(part)?);
        }
    }
    Ok(merge_scopes(out))
}

/// Merge scopes naming the same resource (union of their actions), keeping the order of
/// first appearance.
pub fn merge_scopes(scopes: Vec<Scope>) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::with_capacity(scopes.len());
    for s in scopes {
        match out.iter_mut().find(|o| o.same_resource(&s)) {
            Some(existing) => existing.actions = existing.actions.union(s.actions),
            None => out.push(s),
        }
    }
    out
}

/// Format scopes for a challenge's `scope` parameter: space separated.
pub fn format_scopes(scopes: &[Scope]) -> String {
    let mut out = String::new();
    for (i, s) in scopes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&s.to_string());
    }
    out
}

fn is_type_value(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_name_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\'
}

fn is_action_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '*' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_repository_scopes() {
        let s = Scope::parse("repository:library/nginx:pull,push").unwrap();
        assert_eq!(s.resource_type, ResourceType::Repository);
        assert_eq!(s.class, None);
        assert_eq!(s.name, "library/nginx");
        assert_eq!(s.actions, Actions::PULL_PUSH);
        assert_eq!(s.to_string(), "repository:library/nginx:pull,push");

        let s = Scope::parse("repository:private-prj/nginx:*").unwrap();
        assert_eq!(s.actions, Actions::ALL);
        assert_eq!(s.to_string(), "repository:private-prj/nginx:*");

        let s = Scope::parse("repository:a:delete").unwrap();
        assert!(s.actions.allows(Action::Delete));
        assert!(!s.actions.allows(Action::Pull));
    }

    #[test]
    fn parses_catalog_and_plugin_class() {
        let s = Scope::parse("registry:catalog:*").unwrap();
        assert!(s.is_catalog());
        assert_eq!(s, Scope::catalog());

        let s = Scope::parse("repository(plugin):vieux/sshfs:pull").unwrap();
        assert_eq!(s.resource_type, ResourceType::Repository);
        assert_eq!(s.class.as_deref(), Some("plugin"));
        assert_eq!(s.name, "vieux/sshfs");
        assert_eq!(s.to_string(), "repository(plugin):vieux/sshfs:pull");
        assert!(!s.is_catalog());
    }

    #[test]
    fn names_may_hold_a_host_and_port() {
        let s = Scope::parse("repository:localhost:5000/team/app:pull").unwrap();
        assert_eq!(s.name, "localhost:5000/team/app");
        assert_eq!(s.actions, Actions::PULL);
    }

    #[test]
    fn unknown_actions_are_dropped_and_empty_lists_allowed() {
        let s = Scope::parse("repository:a/b:pull,scanner-pull,,push").unwrap();
        assert_eq!(s.actions, Actions::PULL_PUSH);
        let s = Scope::parse("repository:a/b:").unwrap();
        assert!(s.actions.is_empty());
        assert_eq!(s.to_string(), "repository:a/b:");
        let s = Scope::parse("foo:bar:baz").unwrap();
        assert_eq!(s.resource_type, ResourceType::Other("foo".into()));
    }

    #[test]
    fn star_stands_alone() {
        let s = Scope::parse("repository:a:pull,*,push").unwrap();
        assert_eq!(s.actions, Actions::ALL);
        assert_eq!(s.to_string(), "repository:a:*");
        assert!(s.actions.allows(Action::Delete));
        assert!(!s.actions.contains(Action::Pull));
    }

    #[test]
    fn rejects_malformed_scopes() {
        for bad in [
            "",
            "repository",
            "repository:name",
            ":name:pull",
            "repository::pull",
            "Repository:a:pull",
            "repository(:a:pull",
            "repository(plugin:a:pull",
            "repository():a:pull",
            "repository(Plugin):a:pull",
            "repository:a\"b:pull",
            "repository:a\\b:pull",
            "repository:a\tb:pull",
            "repository:a\u{7f}b:pull",
            "repository:a:PULL",
            "repository:a:pull;push",
        ] {
            let err = Scope::parse(bad).unwrap_err();
            assert!(
                matches!(err, ScopeError::Invalid { .. }),
                "{bad:?} gave {err:?}"
            );
            assert!(err.to_string().contains("repository:team/app:pull,push"));
        }
        let long = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_LEN));
        assert!(matches!(
            Scope::parse(&long),
            Err(ScopeError::TooLong { .. })
        ));
    }

    #[test]
    fn several_scopes_and_params_are_merged() {
        let scopes = parse_scope_params([
            "repository:a/b:pull repository:c/d:push",
            "repository:a/b:push",
            "  registry:catalog:*  ",
        ])
        .unwrap();
        assert_eq!(
            scopes,
            vec![
                Scope::repository("a/b", Actions::PULL_PUSH),
                Scope::repository("c/d", Actions::of(&[Action::Push])),
                Scope::catalog(),
            ]
        );
        assert_eq!(
            format_scopes(&scopes),
            "repository:a/b:pull,push repository:c/d:push registry:catalog:*"
        );
        assert_eq!(parse_scopes("").unwrap(), vec![]);
        // The plugin class is a different resource.
        let scopes = parse_scopes("repository:a:pull repository(plugin):a:push").unwrap();
        assert_eq!(scopes.len(), 2);
    }

    #[test]
    fn too_many_scopes() {
        let value = vec!["repository:a:pull"; MAX_SCOPES + 1].join(" ");
        assert_eq!(
            parse_scopes(&value),
            Err(ScopeError::TooMany { max: MAX_SCOPES })
        );
        let value = vec!["repository:a:pull"; MAX_SCOPES].join(" ");
        assert_eq!(parse_scopes(&value).unwrap().len(), 1);
    }

    #[test]
    fn intersection() {
        let pp = Actions::PULL_PUSH;
        assert_eq!(Actions::ALL.intersect(Actions::ALL), Actions::ALL);
        assert_eq!(Actions::ALL.intersect(pp), pp);
        assert_eq!(pp.intersect(Actions::ALL), pp);
        assert_eq!(pp.intersect(Actions::PULL), Actions::PULL);
        assert_eq!(
            Actions::of(&[Action::Delete]).intersect(Actions::PULL_PUSH),
            Actions::NONE
        );
        assert_eq!(
            Actions::of(&[Action::Delete, Action::Pull]).intersect(Actions::PULL_PUSH_DELETE),
            Actions::of(&[Action::Pull, Action::Delete])
        );
        assert_eq!(Actions::NONE.intersect(Actions::ALL), Actions::NONE);
        assert_eq!(pp.union(Actions::ALL), Actions::ALL);
        assert_eq!(Actions::PULL.to_strings(), vec!["pull".to_string()]);
        assert_eq!(format!("{:?}", pp), "Actions(pull,push)");
    }

    fn action() -> impl Strategy<Value = Action> {
        prop::sample::select(Action::EVERY.to_vec())
    }

    fn scope() -> impl Strategy<Value = Scope> {
        (
            prop_oneof![
                Just(ResourceType::Repository),
                Just(ResourceType::Registry),
                "[a-z0-9]{1,12}".prop_map(|s| ResourceType::parse(&s).unwrap()),
            ],
            proptest::option::of("[a-z0-9]{1,8}"),
            "[a-z0-9][a-z0-9._/:-]{0,40}",
            prop::collection::vec(action(), 0..5),
        )
            .prop_map(|(resource_type, class, name, actions)| Scope {
                resource_type,
                class,
                name,
                actions: Actions::of(&actions),
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Scope::parse(&s);
            let _ = parse_scopes(&s);
        }

        #[test]
        fn parse_never_panics_on_scope_like_input(s in "[a-z()]{0,12}:[ -~]{0,30}:[a-z*,-]{0,20}") {
            if let Ok(scope) = Scope::parse(&s) {
                // Whatever parses formats to something that parses to the same scope.
                prop_assert_eq!(Scope::parse(&scope.to_string()).unwrap(), scope);
            }
        }

        #[test]
        fn round_trip(scope in scope()) {
            let text = scope.to_string();
            prop_assert_eq!(Scope::parse(&text).unwrap(), scope);
        }

        #[test]
        fn round_trip_lists(scopes in prop::collection::vec(scope(), 0..10)) {
            let merged = merge_scopes(scopes);
            let text = format_scopes(&merged);
            prop_assert_eq!(parse_scopes(&text).unwrap(), merged);
        }

        #[test]
        fn intersection_never_exceeds_either_side(
            a in prop::collection::vec(action(), 0..5),
            b in prop::collection::vec(action(), 0..5),
        ) {
            let (a, b) = (Actions::of(&a), Actions::of(&b));
            let i = a.intersect(b);
            for x in Action::EVERY {
                if i.allows(x) {
                    prop_assert!(a.allows(x) && b.allows(x), "{:?} ∩ {:?} = {:?}", a, b, i);
                }
                if x != Action::All && a.contains(x) && b.allows(x) {
                    prop_assert!(i.allows(x));
                }
            }
        }
    }
}
