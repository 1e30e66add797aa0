//! Access control for Berth, independent of HTTP and of the database: the server wires
//! these pieces into its handlers and implements [`ProjectLookup`] over its metadata store.
//!
//! | module | holds | main items |
//! |---|---|---|
//! | [`scope`] | Docker token scopes (`repository:library/nginx:pull,push`, `registry:catalog:*`) | [`Scope`], [`Action`], [`Actions`], [`parse_scope_params`] |
//! | [`challenge`] | `WWW-Authenticate` challenges out, `Authorization` headers in | [`BearerChallenge`], [`basic_challenge`], [`parse_authorization`], [`Credentials`] |
//! | [`password`] | Argon2id hashing, bcrypt (htpasswd) verification, generated secrets | [`hash_password`], [`verify_login`], [`generate_secret`] |
//! | [`token`] | ES256 JWT access and refresh tokens in Docker's format, the signing key file | [`SigningKey`], [`TokenService`], [`VerifiedToken`] |
//! | [`policy`] | roles, visibility, robots, and what a principal may do | [`Principal`], [`Role`], [`grant`], [`can_read`], [`ProjectLookup`] |
//! | [`ratelimit`] | failed-login limits per account and per client address | [`LoginLimiter`], [`Throttled`] |
//!
//! A token request, end to end (the server's part in brackets):
//!
//! 1. [the client was refused with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`,
//!    built with [`BearerChallenge`]];
//! 2. [`GET /service/token?service=…&scope=…`]: [`parse_authorization`] the `Authorization`
//!    header; for Basic credentials, [`LoginLimiter::check`], then [`verify_login`] against
//!    the stored hash (or `None` for an unknown name), then `record_failure`/`record_success`;
//! 3. [`parse_scope_params`] the `scope` parameters, [look up the projects in
//!    [`projects_in`] them], [`grant`] → the scopes the token may carry;
//! 4. [`TokenService::issue`] (and [`TokenService::issue_refresh`] for the OAuth2 form);
//! 5. on every registry request: [`TokenService::verify`] the bearer token for this service,
//!    then [`VerifiedToken::allows`] the repository and action, else 401/403 with a new
//!    challenge.
//!
//! Every error type (collected in [`AuthError`]) says what was wrong and what to do, and
//! none of them — nor any `Debug` output here — contains a password, secret or token.

pub mod challenge;
pub mod password;
pub mod policy;
pub mod ratelimit;
pub mod scope;
pub mod token;

pub use challenge::{
    BearerChallenge, ChallengeError, Credentials, CredentialsError, basic_authorization,
    basic_challenge, bearer_challenge, parse_authorization,
};
pub use password::{
    PasswordError, generate_secret, hash_password, needs_rehash, verify_login, verify_password,
};
pub use policy::{
    MemoryLookup, Principal, ProjectLookup, Robot, RobotPermission, Role, UnknownRole, Visibility,
    allowed_actions, can_manage_project, can_read, grant, project_of, projects_in,
};
pub use ratelimit::{Clock, LimiterConfig, LoginLimiter, ManualClock, Throttled, ThrottledBy};
pub use scope::{
    Action, Actions, ResourceType, Scope, ScopeError, format_scopes, parse_scope_params,
    parse_scopes,
};
pub use token::{
    IssuedToken, RefreshToken, SigningKey, TokenConfig, TokenError, TokenService, VerifiedToken,
};

/// Any error of this crate, for callers that handle them together.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    UnknownRole(#[from] UnknownRole),
}
