//! Authentication and authorization of every registry request, Docker-token style.
//!
//! A request carries nothing (anonymous), `Basic` credentials (a user or a robot; accepted
//! directly for simple clients), or a `Bearer` token from [`crate::token`]. [`Auth::caller`]
//! turns the header into a [`Caller`]; [`Auth::require`] checks one action on one
//! repository and answers 401 with a precise `WWW-Authenticate` challenge, or 403.
//! The rules themselves live in `berth_auth::policy`; this module only fetches the facts
//! they need (project visibility, the caller's role) from the account store.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use berth_auth::{
    Action, Actions, BearerChallenge, ChallengeError, Credentials, LoginLimiter, MemoryLookup,
    Principal, ResourceType, Role, Scope, Throttled, ThrottledBy, TokenService, VerifiedToken,
    Visibility, parse_authorization, project_of, verify_login,
};
use berth_proto::error::ErrorCode;
use berth_storage::{AccountStore, AuditEvent, ProjectRole};
use sha2::Digest as _;

use crate::error::{ApiError, ApiResult};

/// How long a verified Basic login is remembered, so that clients sending Basic on every
/// request pay for Argon2 at most once a second. Changes made through this server clear it
/// at once; changes by the CLI on the data directory apply within this time.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(1);
/// Password verifications that may run at once for different credentials.
const LOGIN_FLIGHT_STRIPES: usize = 16;
/// How long a project's visibility is remembered. Changes made through this server apply
/// at once (its caches are cleared); changes by `berth project` on the data directory
/// apply within this time.
const VISIBILITY_TTL: Duration = Duration::from_secs(1);
/// Bound on remembered logins and tokens (entries are small; the cap bounds memory).
const CACHE_CAP: usize = 10_000;

/// Who is calling, as established from the `Authorization` header.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The bearer token, when the request carried one: its scopes bound what it may do.
    pub token: Option<Arc<VerifiedToken>>,
    pub addr: IpAddr,
}

impl Caller {
    pub fn anonymous(addr: IpAddr) -> Caller {
        Caller {
            principal: Principal::Anonymous,
            token: None,
            addr,
        }
    }

    /// Name for the audit log.
    pub fn actor(&self) -> String {
        match &self.principal {
            Principal::Anonymous => "anonymous".to_string(),
            p => p.subject().to_string(),
        }
    }
}

/// The registry's authentication service.
pub struct Auth {
    pub accounts: Arc<dyn AccountStore>,
    pub tokens: TokenService,
    pub limiter: LoginLimiter,
    /// `https://host[:port]` clients reach us at; None derives it from each request.
    pub external_url: Option<String>,
    /// Believe `X-Forwarded-Proto` / `X-Forwarded-Host` (only behind a trusted proxy).
    pub trust_forwarded: bool,
    /// The scheme this server itself speaks.
    pub scheme: &'static str,
    logins: TtlCache<[u8; 32], Principal>,
    projects: TtlCache<String, Option<Visibility>>,
    roles: TtlCache<(String, String), Option<Role>>,
    subjects: TtlCache<String, Principal>,
    verified: Mutex<HashMap<[u8; 32], Arc<VerifiedToken>>>,
    /// One password verification at a time per credentials (by stripe): when a remembered
    /// login expires under load, the other requests with the same credentials wait for the
    /// one Argon2 run and then find it remembered, instead of all hashing at once (which on
    /// a busy machine took longer than the 1 s the login is remembered, so none ever hit).
    login_flights: [tokio::sync::Mutex<()>; LOGIN_FLIGHT_STRIPES],
    /// One visibility read at a time per project (by stripe), for the same reason.
    visibility_flights: [tokio::sync::Mutex<()>; LOGIN_FLIGHT_STRIPES],
    /// Failed-login counters shared with the other replicas (PostgreSQL); when set, they
    /// replace `limiter`'s in-memory ones (same limits).
    shared_limits: Option<berth_storage::postgres::PgMetadata>,
    /// The password of [`SYSTEM_USER`], derived from the token signing key, never stored,
    /// sent or shown outside this server: only the replication engine logs in with it.
    system_secret: String,
}

/// The account this server's own replication engine uses to read and write its registry
/// over loopback (a system administrator that exists in no table; user names may not start
/// with `berth$`, so no stored account can take it).
pub const SYSTEM_USER: &str = "berth$system";

fn system_principal() -> Principal {
    Principal::User {
        name: SYSTEM_USER.to_string(),
        system_admin: true,
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The shared limiter's keys: the account by a hash of its name, the address as the
/// in-memory limiter normalizes it.
fn limit_keys(account: &str, addr: IpAddr) -> (String, String) {
    let hash = sha2::Sha256::digest(account.as_bytes());
    (
        format!("account:{}", hex::encode(hash)),
        format!("address:{}", berth_auth::ratelimit::normalize(addr)),
    )
}

fn key_of(parts: &[&str]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

pub fn role_of(r: ProjectRole) -> Role {
    match r {
        ProjectRole::ProjectAdmin => Role::ProjectAdmin,
        ProjectRole::Maintainer => Role::Maintainer,
        ProjectRole::Developer => Role::Developer,
        ProjectRole::Guest => Role::Guest,
    }
}

impl Auth {
    pub fn new(
        accounts: Arc<dyn AccountStore>,
        tokens: TokenService,
        external_url: Option<String>,
        trust_forwarded: bool,
        scheme: &'static str,
    ) -> Auth {
        // Derived from the token signing key, so every replica sharing the key (and so the
        // database) accepts it: the token realm may be another replica's.
        let system_secret = hex::encode(sha2::Sha256::digest(
            format!("{SYSTEM_USER}\0{}", tokens.key().private_key_pem()).as_bytes(),
        ));
        Auth {
            accounts,
            tokens,
            limiter: LoginLimiter::default(),
            external_url: external_url.map(|u| u.trim_end_matches('/').to_string()),
            trust_forwarded,
            scheme,
            logins: TtlCache::new(BASIC_CACHE_TTL),
            projects: TtlCache::new(VISIBILITY_TTL),
            roles: TtlCache::new(VISIBILITY_TTL),
            subjects: TtlCache::new(VISIBILITY_TTL),
            verified: Mutex::new(HashMap::new()),
            login_flights: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            visibility_flights: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            shared_limits: None,
            system_secret,
        }
    }

    /// The password of [`SYSTEM_USER`] (for this process's replication engine).
    pub fn system_secret(&self) -> &str {
        &self.system_secret
    }

    /// Whether the caller is this server's own replication engine.
    pub fn is_system(caller: &Caller) -> bool {
        caller.principal.subject() == SYSTEM_USER
    }

    /// Count failed logins in PostgreSQL, shared by every replica using `pg`, so that N
    /// replicas do not allow N times the attempts.
    pub fn with_shared_login_limits(mut self, pg: berth_storage::postgres::PgMetadata) -> Auth {
        self.shared_limits = Some(pg);
        self
    }

    /// Whether `account` or `addr` is currently blocked.
    async fn limit_check(&self, account: &str, addr: IpAddr) -> ApiResult<Result<(), Throttled>> {
        let Some(pg) = &self.shared_limits else {
            return Ok(self.limiter.check(account, addr));
        };
        let (account_key, address_key) = limit_keys(account, addr);
        let now = now_millis();
        let blocked = pg
            .login_blocked(&[account_key.clone(), address_key], now)
            .await?;
        Ok(match blocked {
            None => Ok(()),
            Some((key, until)) => Err(Throttled {
                by: if key == account_key {
                    ThrottledBy::Account
                } else {
                    ThrottledBy::Address
                },
                retry_after: Duration::from_millis(u64::try_from(until - now).unwrap_or(0)),
            }),
        })
    }

    async fn limit_failure(&self, account: &str, addr: IpAddr) {
        let Some(pg) = &self.shared_limits else {
            self.limiter.record_failure(account, addr);
            return;
        };
        let config = *self.limiter.config();
        let forget = i64::try_from(config.forget_after.as_millis()).unwrap_or(i64::MAX);
        let (account_key, address_key) = limit_keys(account, addr);
        let now = now_millis();
        for (key, backoff) in [(account_key, config.account), (address_key, config.address)] {
            let counted = match pg.login_failure(&key, now, forget).await {
                Ok(failures) => {
                    let delay = backoff.delay(failures);
                    if delay.is_zero() {
                        Ok(())
                    } else {
                        let until = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                        pg.login_block(&key, until).await
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = counted {
                tracing::warn!(error = %e, "could not count a failed login in the database");
            }
        }
    }

    async fn limit_success(&self, account: &str, addr: IpAddr) {
        let Some(pg) = &self.shared_limits else {
            self.limiter.record_success(account, addr);
            return;
        };
        let (account_key, _) = limit_keys(account, addr);
        if let Err(e) = pg.login_success(&account_key).await {
            tracing::warn!(error = %e, "could not clear failed logins in the database");
        }
    }

    /// The service name tokens are issued for (`aud`).
    pub fn service(&self) -> &str {
        &self.tokens.config().service
    }

    /// `https://host/service/token` as the client reaches us.
    pub fn realm(&self, headers: &HeaderMap, uri_authority: Option<&str>) -> String {
        format!("{}/service/token", self.base_url(headers, uri_authority))
    }

    /// The externally visible base URL (`https://host:port`).
    pub fn base_url(&self, headers: &HeaderMap, uri_authority: Option<&str>) -> String {
        if let Some(url) = &self.external_url {
            return url.clone();
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let forwarded = |name: &str| {
            self.trust_forwarded
                .then(|| header(name))
                .flatten()
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let scheme = forwarded("x-forwarded-proto").unwrap_or(self.scheme);
        let host = forwarded("x-forwarded-host")
            .or(uri_authority)
            .or_else(|| header("host"))
            .unwrap_or("localhost");
        format!("{scheme}://{host}")
    }

    /// Establish the caller from the request headers. Bad credentials are an error
    /// (401), never silently anonymous.
    pub async fn caller(&self, headers: &HeaderMap, addr: IpAddr) -> ApiResult<Caller> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::anonymous(addr));
        };
        let creds = parse_authorization(value.as_bytes())
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
        match creds {
            Credentials::Bearer(token) => {
                let token = self.verify_token(&token)?;
                let principal = self.subject_principal(&token.subject).await?;
                Ok(Caller {
                    principal,
                    token: Some(token),
                    addr,
                })
            }
            Credentials::Basic { username, password } => {
                let principal = self.login(&username, &password, addr).await?;
                Ok(Caller {
                    principal,
                    token: None,
                    addr,
                })
            }
        }
    }

    fn verify_token(&self, token: &str) -> ApiResult<Arc<VerifiedToken>> {
        let key = key_of(&[token]);
        if let Some(v) = self.verified.lock().unwrap().get(&key)
            && v.expires_at as i64 > now_secs()
        {
            return Ok(v.clone());
        }
        let verified = self.tokens.verify(token, self.service()).map_err(|e| {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("bearer token refused: {e}"),
            )
        })?;
        let verified = Arc::new(verified);
        let mut cache = self.verified.lock().unwrap();
        if cache.len() >= CACHE_CAP {
            let now = now_secs();
            cache.retain(|_, v| v.expires_at as i64 > now);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }

    /// [`Auth::caller_principal`], remembered for [`VISIBILITY_TTL`]: a bearer request then
    /// costs no database query. Deletions and revocations clear it at once.
    async fn subject_principal(&self, subject: &str) -> ApiResult<Principal> {
        if subject.is_empty() {
            return Ok(Principal::Anonymous);
        }
        if let Some(p) = self.subjects.get(subject) {
            return Ok(p);
        }
        let principal = self.caller_principal(subject).await?;
        self.subjects.put(subject.to_string(), principal.clone());
        Ok(principal)
    }

    /// The principal a token subject names (it may have been deleted or revoked since).
    pub async fn caller_principal(&self, subject: &str) -> ApiResult<Principal> {
        if subject.is_empty() {
            return Ok(Principal::Anonymous);
        }
        if subject == SYSTEM_USER {
            return Ok(system_principal());
        }
        let gone = || {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "the account {subject:?} of this token no longer exists or is disabled; log in again"
                ),
            )
        };
        if subject.starts_with("robot$") {
            let robot = self.accounts.robot(subject).await?.ok_or_else(gone)?;
            let robot = robot_principal(&robot);
            return match &robot {
                Principal::Robot(r) if r.is_active_at(SystemTime::now()) => Ok(robot),
                _ => Err(gone()),
            };
        }
        let user = self
            .accounts
            .user(subject)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(gone)?;
        Ok(Principal::User {
            name: user.name,
            system_admin: user.admin,
        })
    }

    /// Check a username (or robot name) and password, rate-limited per account and
    /// address. Failures are audited; the password never is.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        addr: IpAddr,
    ) -> ApiResult<Principal> {
        if username == SYSTEM_USER {
            // Constant time: compare digests.
            let ok = sha2::Sha256::digest(password.as_bytes())
                == sha2::Sha256::digest(self.system_secret.as_bytes());
            return if ok {
                Ok(system_principal())
            } else {
                Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "{SYSTEM_USER} is the server's own account; it cannot log in from outside"
                    ),
                ))
            };
        }
        let cache_key = key_of(&[username, password]);
        if let Some(p) = self.logins.get(&cache_key) {
            return Ok(p);
        }
        if let Err(t) = self.limit_check(username, addr).await? {
            return Err(
                ApiError::new(ErrorCode::TooManyRequests, t.to_string()).with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&t.retry_after_secs().to_string()).unwrap(),
                ),
            );
        }
        let stripe = usize::from(cache_key[0]) % LOGIN_FLIGHT_STRIPES;
        let _flight = self.login_flights[stripe].lock().await;
        if let Some(p) = self.logins.get(&cache_key) {
            return Ok(p);
        }
        let principal = self.check_password(username, password).await?;
        let Some(principal) = principal else {
            self.limit_failure(username, addr).await;
            self.audit(username, "login_failed", username, addr, "")
                .await;
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "invalid username or password for {username:?}; check them, or ask an administrator to reset the password"
                ),
            ));
        };
        self.limit_success(username, addr).await;
        self.logins.put(cache_key, principal.clone());
        Ok(principal)
    }

    /// Forget remembered logins, project visibility and roles (after a password change, a
    /// deletion, a revocation, a membership or project change).
    pub fn forget_logins(&self) {
        self.logins.clear();
        self.projects.clear();
        self.roles.clear();
        self.subjects.clear();
        self.verified.lock().unwrap().clear();
    }

    async fn check_password(&self, username: &str, password: &str) -> ApiResult<Option<Principal>> {
        if username.starts_with("robot$") {
            let robot = self.accounts.robot(username).await?;
            let hash = robot.as_ref().map(|r| r.secret_hash.clone());
            let password = password.to_string();
            let ok = tokio::task::spawn_blocking(move || verify_login(&password, hash.as_deref()))
                .await
                .unwrap_or(false);
            return Ok(match robot {
                Some(r) if ok => {
                    let p = robot_principal(&r);
                    match &p {
                        Principal::Robot(rr) if rr.is_active_at(SystemTime::now()) => Some(p),
                        _ => None,
                    }
                }
                _ => None,
            });
        }
        let user = self.accounts.user(username).await?;
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let password = password.to_string();
        // Argon2 is deliberately slow: keep it off the async workers. Unknown users are
        // verified against a dummy hash so timing does not reveal which names exist.
        let ok = tokio::task::spawn_blocking(move || verify_login(&password, hash.as_deref()))
            .await
            .unwrap_or(false);
        Ok(match user {
            Some(u) if ok && !u.disabled => Some(Principal::User {
                name: u.name,
                system_admin: u.admin,
            }),
            _ => None,
        })
    }

    /// A project's visibility, remembered for [`VISIBILITY_TTL`]: anonymous pulls of public
    /// images are the hot path and need not query the database each time.
    async fn visibility(&self, project: &str) -> ApiResult<Option<Visibility>> {
        if let Some(vis) = self.projects.get(project) {
            return Ok(vis);
        }
        // One database read per project when the entry expires under load: the others
        // wait for it and find it remembered.
        let stripe = project.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        }) % LOGIN_FLIGHT_STRIPES;
        let _flight = self.visibility_flights[stripe].lock().await;
        if let Some(vis) = self.projects.get(project) {
            return Ok(vis);
        }
        let vis = self.accounts.project(project).await?.map(|p| {
            if p.public {
                Visibility::Public
            } else {
                Visibility::Private
            }
        });
        self.projects.put(project.to_string(), vis);
        Ok(vis)
    }

    /// A user's role in a project, remembered like visibility.
    async fn role(&self, project: &str, user: &str) -> ApiResult<Option<Role>> {
        let key = (project.to_string(), user.to_string());
        if let Some(role) = self.roles.get(&key) {
            return Ok(role);
        }
        let role = self.accounts.role_of(project, user).await?.map(role_of);
        self.roles.put(key, role);
        Ok(role)
    }

    /// Facts about the given projects for `principal`, for the pure policy functions.
    pub async fn lookup(
        &self,
        principal: &Principal,
        projects: &[&str],
    ) -> ApiResult<MemoryLookup> {
        let mut lookup = MemoryLookup::new();
        for &project in projects {
            let Some(vis) = self.visibility(project).await? else {
                continue;
            };
            lookup = lookup.project(project, vis);
            if let Principal::User { name, .. } = principal
                && let Some(role) = self.role(project, name).await?
            {
                lookup = lookup.member(name, project, role);
            }
        }
        Ok(lookup)
    }

    /// What the caller's principal may do on `repository` now, by the policy.
    async fn rights(&self, caller: &Caller, repository: &str) -> ApiResult<Actions> {
        let lookup = self
            .lookup(&caller.principal, &[project_of(repository)])
            .await?;
        Ok(berth_auth::allowed_actions(
            &caller.principal,
            repository,
            &lookup,
        ))
    }

    /// What `caller` may do on `repository`: the policy's answer, further limited by the
    /// token's grant when the request carries one (a token never outlives a demotion).
    pub async fn actions(&self, caller: &Caller, repository: &str) -> ApiResult<Actions> {
        let rights = self.rights(caller, repository).await?;
        Ok(match &caller.token {
            Some(token) => token.repository_actions(repository).intersect(rights),
            None => rights,
        })
    }

    /// Require `action` on `repository`, or answer 401 (with a challenge naming the scope)
    /// or 403. A private repository and a missing one get the same answer (anonymous: 401,
    /// then 403 once a token was asked for it), so neither can be told from the other.
    pub async fn require(
        &self,
        caller: &Caller,
        repository: &str,
        action: Action,
        challenge: &ChallengeCtx,
    ) -> ApiResult<()> {
        let rights = self.rights(caller, repository).await?;
        let granted = match &caller.token {
            Some(token) => token.repository_actions(repository).intersect(rights),
            None => rights,
        };
        if granted.allows(action) {
            return Ok(());
        }
        let scope_actions = match action {
            Action::Push => Actions::PULL_PUSH,
            a => Actions::of(&[a]),
        };
        let scope = Scope::repository(repository, scope_actions);
        // No token and no credentials: 401, ask for a token naming the scope. A token that
        // never named this repository: 401 too. A token that named it but is too narrow
        // for what the principal may do: 403 with an insufficient_scope challenge (RFC 6750;
        // clients such as oras-py fetch a wider token on it, the others ask for push
        // upfront). Otherwise the principal lacks the right: 403.
        let token_names_resource = caller.token.as_ref().map(|t| {
            t.access
                .iter()
                .any(|s| s.resource_type == ResourceType::Repository && s.name == repository)
        });
        let login_hint = |verb: &str| {
            format!(
                "authentication required to {verb} {repository}; log in (docker login / berth login) with an account that may"
            )
        };
        match token_names_resource {
            None if caller.principal.is_anonymous() => {
                return Err(self.unauthorized(
                    challenge,
                    &[scope],
                    login_hint(action.as_str()),
                    None,
                ));
            }
            Some(false) => {
                return Err(self.unauthorized(
                    challenge,
                    &[scope],
                    login_hint(action.as_str()),
                    Some(ChallengeError::InsufficientScope),
                ));
            }
            Some(true) if rights.allows(action) => {
                let mut e = self.unauthorized(
                    challenge,
                    &[scope],
                    format!(
                        "the token does not carry {} on {repository}; request a token with scope repository:{repository}:{}",
                        action.as_str(),
                        scope_actions
                    ),
                    Some(ChallengeError::InsufficientScope),
                );
                e.code = ErrorCode::Denied;
                return Err(e);
            }
            _ => {}
        }
        let fix = if caller.principal.is_anonymous() {
            "log in (docker login / berth login) with an account that may"
        } else {
            "ask a project admin for a role that allows it"
        };
        Err(ApiError::new(
            ErrorCode::Denied,
            format!(
                "{} may not {} {repository} (scope repository:{repository}:{}); {fix}",
                caller.actor(),
                action.as_str(),
                action.as_str()
            ),
        ))
    }

    /// A 401 with the Bearer challenge for `scopes`.
    pub fn unauthorized(
        &self,
        ctx: &ChallengeCtx,
        scopes: &[Scope],
        detail: String,
        error: Option<ChallengeError>,
    ) -> ApiError {
        let challenge = BearerChallenge {
            realm: &ctx.realm,
            service: self.service(),
            scopes,
            error,
        }
        .to_header_value();
        ApiError::new(ErrorCode::Unauthorized, detail).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
        )
    }

    /// Record an audit event; failures to record are logged, never fatal to the request.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        resource: &str,
        addr: IpAddr,
        detail: &str,
    ) {
        let event = AuditEvent {
            id: 0,
            at: now_secs(),
            actor: actor.to_string(),
            action: action.to_string(),
            resource: resource.to_string(),
            client_addr: addr.to_string(),
            detail: detail.to_string(),
        };
        if let Err(e) = self.accounts.audit(&event).await {
            tracing::error!(error = %e, action, resource, "could not record audit event");
        }
    }

    /// The 401 for a request that carries no usable identity (`GET /v2/` etc.).
    pub fn require_authenticated(&self, caller: &Caller, ctx: &ChallengeCtx) -> ApiResult<()> {
        if caller.principal.is_anonymous() && caller.token.is_none() {
            return Err(self.unauthorized(
                ctx,
                &[],
                "authentication required; log in with docker login / berth login, or fetch an anonymous token from the realm".into(),
                None,
            ));
        }
        Ok(())
    }
}

/// The realm for challenges, derived once per request.
pub struct ChallengeCtx {
    pub realm: String,
}

fn robot_principal(r: &berth_storage::Robot) -> Principal {
    Principal::Robot(berth_auth::Robot {
        name: r.name.clone(),
        project: r.project.clone(),
        permission: if r.can_push {
            berth_auth::RobotPermission::PullPush
        } else {
            berth_auth::RobotPermission::Pull
        },
        expires_at: r.expires_at.map(|e| e.max(0) as u64),
        revoked: r.revoked,
    })
}

/// The client's IP address (from the connection; unspecified when served in-process).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
        Ok(ClientAddr(ip))
    }
}

/// A small map whose entries expire after a fixed time, bounded by [`CACHE_CAP`] entries
/// (when full, expired entries go first, then everything).
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap();
        let (value, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= CACHE_CAP {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= CACHE_CAP {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now()));
    }

    fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }
}
