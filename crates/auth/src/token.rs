//! Signed bearer tokens (JWT, ES256) in the Docker token format, and refresh tokens.
//!
//! **Signing key.** [`SigningKey`] is an ECDSA P-256 key (made by rcgen on aws-lc-rs), kept
//! as a PKCS#8 PEM file. [`SigningKey::load_or_create`] reads it, or creates it with mode
//! 0600 from the start (temporary file, fsync, then a hard link that never replaces an
//! existing file — two processes starting at once end up with the same key). The key id
//! (`kid` header) is derived from the public key, so tokens signed by another key (after
//! a key change) are refused with a clear error.
//!
//! **Access tokens** ([`TokenService::issue`]) are short-lived (default
//! [`DEFAULT_ACCESS_TTL`], 5 minutes) JWTs whose claims follow Docker's token
//! specification:
//!
//! ```json
//! { "iss": "berth", "sub": "alice", "aud": "registry.example.com",
//!   "exp": 1700000300, "nbf": 1700000000, "iat": 1700000000, "jti": "…",
//!   "access": [ { "type": "repository", "name": "library/nginx", "actions": ["pull", "push"] } ] }
//! ```
//!
//! [`TokenService::verify`] checks the algorithm (ES256 only), the signature, the key id,
//! the issuer, the audience (the service), `exp` and `nbf` (with a small leeway for clock
//! skew, [`DEFAULT_LEEWAY`]) and the token type, and returns the subject and the granted
//! access ([`VerifiedToken`]).
//!
//! **Refresh tokens** (the OAuth2 `refresh_token` grant, Docker's "identity token") are
//! long-lived JWTs (default [`DEFAULT_REFRESH_TTL`], 30 days) signed by the same key with
//! `"typ": "refresh"` and no `access` claim. Being self-contained they need no storage. They
//! grant nothing by themselves: the token endpoint, on `grant_type=refresh_token`, verifies
//! one with [`TokenService::verify_refresh`], looks the subject up again (a deleted user or
//! a revoked or expired robot is refused there) and computes access afresh with
//! [`crate::policy::grant`], so role changes apply at once. To invalidate refresh tokens on a
//! password change, compare [`RefreshToken::issued_at`] with the time of the change. An
//! access token is never accepted as a refresh token, nor the reverse.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::scope::{Action, Actions, ResourceType, Scope};

/// Lifetime of an access token.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(5 * 60);
/// Lifetime of a refresh token.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Longest token [`TokenService::verify`] looks at, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Value of the `typ` claim of refresh tokens.
pub const REFRESH_TYP: &str = "refresh";

/// Everything that can go wrong with keys and tokens. Verification errors say why the token
/// was refused; a server answers all of them with 401 and `error="invalid_token"`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot {action} the token signing key {}: {source}", path.display())]
    KeyIo {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the token signing key {} is not a PKCS#8 PEM ECDSA P-256 private key ({reason}); \
         move it away to have a new key generated (tokens already issued become invalid), or \
         convert it with `openssl pkcs8 -topk8 -nocrypt`", path.display()
    )]
    KeyInvalid { path: PathBuf, reason: String },
    #[error("generating a token signing key failed: {0}")]
    KeyGeneration(String),
    #[error("signing a token failed: {0}")]
    Signing(String),
    #[error("the token is {len} bytes, more than the {max} accepted")]
    TooLong { len: usize, max: usize },
    #[error("the token is not a well-formed JWT ({0}); request a new token")]
    Malformed(String),
    #[error("the token is signed with {0}, not ES256; request a new token from this registry")]
    WrongAlgorithm(String),
    #[error(
        "the token was signed by another key (key id {found:?}, this registry uses {expected:?}), \
         perhaps before the signing key was replaced; request a new token"
    )]
    UnknownKey { found: String, expected: String },
    #[error("the token's signature is invalid; request a new token from this registry")]
    BadSignature,
    #[error("the token was issued by another issuer; request a new token from this registry")]
    WrongIssuer,
    #[error(
        "the token is for another service (audience), not {expected:?}; request a token for {expected:?}"
    )]
    WrongAudience { expected: String },
    #[error("the token expired {ago:?} ago; request a new token")]
    Expired { ago: Duration },
    #[error("the token is not valid for another {in_:?} (check the clocks of client and server)")]
    NotYetValid { in_: Duration },
    #[error("a {found} token was sent where {expected} token is needed")]
    WrongType {
        found: &'static str,
        expected: &'static str,
    },
}

/// The ES256 signing key of the token service.
#[derive(Clone)]
pub struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    public_key_pem: String,
    private_key_pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SigningKey {
    /// A new random P-256 key.
    pub fn generate() -> Result<SigningKey, TokenError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TokenError::KeyGeneration(e.to_string()))?;
        Ok(SigningKey::from_key_pair(&pair))
    }

    /// A key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), P-256 only.
    pub fn from_pem(pem: &str) -> Result<SigningKey, TokenError> {
        SigningKey::from_pem_at(pem, Path::new("(in memory)"))
    }

    fn from_pem_at(pem: &str, path: &Path) -> Result<SigningKey, TokenError> {
        let pair =
            KeyPair::from_pkcs8_pem_and_sign_algo(pem, &PKCS_ECDSA_P256_SHA256).map_err(|e| {
                TokenError::KeyInvalid {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        Ok(SigningKey::from_key_pair(&pair))
    }

    fn from_key_pair(pair: &KeyPair) -> SigningKey {
        let spki = pair.subject_public_key_info();
        let digest = Sha256::digest(&spki);
        SigningKey {
            encoding: EncodingKey::from_ec_der(pair.serialized_der()),
            decoding: DecodingKey::from_ec_der(pair.public_key_raw()),
            key_id: URL_SAFE_NO_PAD.encode(&digest[..15]),
            public_key_pem: pair.public_key_pem(),
            private_key_pem: pair.serialize_pem(),
        }
    }

    /// Read the key at `path`, or create it (mode 0600, parent directories as needed) if
    /// the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, TokenError> {
        match fs::read_to_string(path) {
            Ok(pem) => return SigningKey::from_pem_at(&pem, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TokenError::KeyIo {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let key = SigningKey::generate()?;
        let io_err = |action: &'static str| {
            move |source| TokenError::KeyIo {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_err("create the directory of"))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "token.key".to_string());
        let tmp = dir.join(format!(
            ".{file_name}.tmp.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The umask cannot widen 0600, but make sure nothing narrowed it oddly.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(key.private_key_pem.as_bytes())?;
            f.sync_all()
        };
        let written = write();
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(d) = fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(key)
            }
            // Another process created it first: use that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let pem = fs::read_to_string(path).map_err(io_err("read"))?;
                SigningKey::from_pem_at(&pem, path)
            }
            Err(source) => Err(TokenError::KeyIo {
                action: "write",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The key id put in the `kid` header of every token.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key (SubjectPublicKeyInfo PEM), for a resource server that verifies
    /// tokens without the private key.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// The private key as PKCS#8 PEM, to share it with other replicas through their
    /// common database ([`SigningKey::from_pem`] reads it back). Never log it.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }
}

/// Settings of the token service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// `iss` of every token, e.g. `berth` or the external URL.
    pub issuer: String,
    /// The service name (`service=` of the challenge), used as `aud`.
    pub service: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub leeway: Duration,
}

impl TokenConfig {
    /// Defaults: 5-minute access tokens, 30-day refresh tokens, 30 s leeway.
    pub fn new(issuer: impl Into<String>, service: impl Into<String>) -> TokenConfig {
        TokenConfig {
            issuer: issuer.into(),
            service: service.into(),
            access_ttl: DEFAULT_ACCESS_TTL,
            refresh_ttl: DEFAULT_REFRESH_TTL,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// A freshly signed token and what the token endpoint puts next to it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// Seconds until expiry (`expires_in` of the token response).
    pub expires_in: u64,
    /// Unix seconds (`issued_at` of the token response, formatted as RFC 3339).
    pub issued_at: u64,
    /// The token's unique id (`jti`), for the audit log.
    pub id: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .field("id", &self.id)
            .finish()
    }
}

/// What a valid access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`: the user or robot name; empty for anonymous tokens.
    pub subject: String,
    /// The granted access (from the `access` claim; unknown actions dropped).
    pub access: Vec<Scope>,
    /// `jti`.
    pub id: String,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

impl VerifiedToken {
    /// The actions granted on `repository` (plain `repository` type, no class).
    pub fn repository_actions(&self, repository: &str) -> Actions {
        self.access
            .iter()
            .filter(|s| {
                s.resource_type == ResourceType::Repository
                    && s.class.is_none()
                    && s.name == repository
            })
            .fold(Actions::NONE, |acc, s| acc.union(s.actions))
    }

    /// Whether the token allows `action` on `repository` (`*` allows everything).
    pub fn allows(&self, repository: &str, action: Action) -> bool {
        self.repository_actions(repository).allows(action)
    }

    /// Whether the token grants `registry:catalog:*`.
    pub fn allows_catalog(&self) -> bool {
        self.access
            .iter()
            .any(|s| s.is_catalog() && s.actions.allows(Action::All))
    }
}

/// A valid refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The user or robot it was issued to.
    pub subject: String,
    /// `iat`, Unix seconds.
    pub issued_at: u64,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// `jti`.
    pub id: String,
}

/// One entry of the `access` claim (Docker's `ResourceActions`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ClaimAccess {
    #[serde(rename = "type")]
    resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class: Option<String>,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    access: Vec<ClaimAccess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Issues and verifies tokens with one [`SigningKey`].
#[derive(Debug, Clone)]
pub struct TokenService {
    key: SigningKey,
    config: TokenConfig,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random_id() -> Result<String, TokenError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| TokenError::Signing(format!("random token id: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

impl TokenService {
    pub fn new(key: SigningKey, config: TokenConfig) -> TokenService {
        TokenService { key, config }
    }

    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// An access token for `subject` ("" for anonymous) granting `access` (the result of
    /// [`crate::policy::grant`]); scopes with no actions stay, as asked-and-refused.
    pub fn issue(&self, subject: &str, access: &[Scope]) -> Result<IssuedToken, TokenError> {
        self.issue_at(subject, access, SystemTime::now())
    }

    /// [`TokenService::issue`] at a given time (for tests).
    pub fn issue_at(
        &self,
        subject: &str,
        access: &[Scope],
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        // Scopes with no actions are kept (`"actions": []`), as Docker's token servers do:
        // they record that the resource was asked for and refused.
        let access = access
            .iter()
            .map(|s| ClaimAccess {
                resource_type: s.resource_type.as_str().to_string(),
                class: s.class.clone(),
                name: s.name.clone(),
                actions: s.actions.to_strings(),
            })
            .collect();
        self.sign(subject, access, None, self.config.access_ttl, now)
    }

    /// A refresh token for `subject` (see the module documentation).
    pub fn issue_refresh(&self, subject: &str) -> Result<IssuedToken, TokenError> {
        self.issue_refresh_at(subject, SystemTime::now())
    }

    /// [`TokenService::issue_refresh`] at a given time (for tests).
    pub fn issue_refresh_at(
        &self,
        subject: &str,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        self.sign(
            subject,
            Vec::new(),
            Some(REFRESH_TYP.to_string()),
            self.config.refresh_ttl,
            now,
        )
    }

    fn sign(
        &self,
        subject: &str,
        access: Vec<ClaimAccess>,
        typ: Option<String>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        let iat = unix_seconds(now);
        let ttl = ttl.as_secs().max(1);
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub: subject.to_string(),
            aud: self.config.service.clone(),
            exp: iat.saturating_add(ttl),
            nbf: iat,
            iat,
            jti: random_id()?,
            access,
            typ,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.key_id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
            issued_at: iat,
            id: claims.jti,
        })
    }

    /// Verify an access token for `expected_audience` (the service) and return what it
    /// grants.
    pub fn verify(
        &self,
        token: &str,
        expected_audience: &str,
    ) -> Result<VerifiedToken, TokenError> {
        self.verify_at(token, expected_audience, SystemTime::now())
    }

    /// [`TokenService::verify`] at a given time (for tests).
    pub fn verify_at(
        &self,
        token: &str,
        expected_audience: &str,
        now: SystemTime,
    ) -> Result<VerifiedToken, TokenError> {
        let claims = self.decode(token, expected_audience, now)?;
        if claims.typ.is_some() {
            return Err(TokenError::WrongType {
                found: "refresh",
                expected: "an access",
            });
        }
        let access = claims
            .access
            .into_iter()
            .filter_map(|a| {
                Some(Scope {
                    resource_type: ResourceType::parse(&a.resource_type)?,
                    class: a.class,
                    name: a.name,
                    actions: a.actions.iter().filter_map(|s| Action::parse(s)).collect(),
                })
            })
            .collect();
        Ok(VerifiedToken {
            subject: claims.sub,
            access,
            id: claims.jti,
            expires_at: claims.exp,
        })
    }

    /// Verify a refresh token (audience: this service).
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshToken, TokenError> {
        self.verify_refresh_at(token, SystemTime::now())
    }

    /// [`TokenService::verify_refresh`] at a given time (for tests).
    pub fn verify_refresh_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<RefreshToken, TokenError> {
        let claims = self.decode(token, &self.config.service, now)?;
        if claims.typ.as_deref() != Some(REFRESH_TYP) {
            return Err(TokenError::WrongType {
                found: "an access",
                expected: "a refresh",
            });
        }
        Ok(RefreshToken {
            subject: claims.sub,
            issued_at: claims.iat,
            expires_at: claims.exp,
            id: claims.jti,
        })
    }

    fn decode(
        &self,
        token: &str,
        expected_audience: &str,
        now: SystemTime,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        if let Some(kid) = &header.kid
            && kid != &self.key.key_id
        {
            return Err(TokenError::UnknownKey {
                found: kid.clone(),
                expected: self.key.key_id.clone(),
            });
        }
        let mut validation = Validation::new(Algorithm::ES256);
        // Time is checked below against `now` (so tests can move the clock).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_audience(&[expected_audience]);
        validation.set_issuer(&[&self.config.issuer]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAudience => TokenError::WrongAudience {
                    expected: expected_audience.to_string(),
                },
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAlgorithm => {
                    TokenError::WrongAlgorithm(format!("{:?}", header.alg))
                }
                _ => TokenError::Malformed(e.to_string()),
            },
        )?;
        let claims = data.claims;
        let now_s = unix_seconds(now);
        let leeway = self.config.leeway.as_secs();
        if now_s >= claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired {
                ago: Duration::from_secs(now_s - claims.exp),
            });
        }
        if claims.nbf > now_s.saturating_add(leeway) {
            return Err(TokenError::NotYetValid {
                in_: Duration::from_secs(claims.nbf - now_s),
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const SERVICE: &str = "registry.example.com";

    fn key() -> SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().unwrap()).clone()
    }

    fn service() -> TokenService {
        TokenService::new(key(), TokenConfig::new("berth", SERVICE))
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn claims_of(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn issue_and_verify() {
        let svc = service();
        let access = vec![
            Scope::repository("library/nginx", Actions::PULL_PUSH),
            Scope::repository("library/empty", Actions::NONE),
            Scope::catalog(),
        ];
        let now = t(1_700_000_000);
        let issued = svc.issue_at("alice", &access, now).unwrap();
        assert_eq!(issued.expires_in, 300);
        assert_eq!(issued.issued_at, 1_700_000_000);

        let c = claims_of(&issued.token);
        assert_eq!(c["iss"], "berth");
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["aud"], SERVICE);
        assert_eq!(c["exp"], 1_700_000_300u64);
        assert_eq!(c["nbf"], 1_700_000_000u64);
        assert_eq!(c["iat"], 1_700_000_000u64);
        assert_eq!(c["jti"], issued.id.as_str());
        assert_eq!(
            c["access"],
            serde_json::json!([
                {"type": "repository", "name": "library/nginx", "actions": ["pull", "push"]},
                {"type": "repository", "name": "library/empty", "actions": []},
                {"type": "registry", "name": "catalog", "actions": ["*"]},
            ])
        );
        assert!(c.get("typ").is_none());

        let v = svc
            .verify_at(&issued.token, SERVICE, t(1_700_000_100))
            .unwrap();
        assert_eq!(v.subject, "alice");
        assert_eq!(v.id, issued.id);
        assert_eq!(v.expires_at, 1_700_000_300);
        assert_eq!(v.access, access);
        assert!(v.allows("library/nginx", Action::Pull));
        assert!(v.allows("library/nginx", Action::Push));
        assert!(!v.allows("library/nginx", Action::Delete));
        assert!(!v.allows("library/empty", Action::Pull));
        assert!(!v.allows("library/other", Action::Pull));
        assert!(v.allows_catalog());
        // Not the real clock in tests, but the real clock works too.
        let fresh = svc.issue("bob", &[]).unwrap();
        let v = svc.verify(&fresh.token, SERVICE).unwrap();
        assert_eq!(v.subject, "bob");
        assert!(v.access.is_empty());
        assert!(!v.allows_catalog());
    }

    #[test]
    fn header_carries_algorithm_and_key_id() {
        let issued = service().issue("a", &[]).unwrap();
        let h = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(h.alg, Algorithm::ES256);
        assert_eq!(h.kid.as_deref(), Some(key().key_id()));
        assert_eq!(key().key_id().len(), 20);
        assert!(format!("{:?}", issued).contains("<redacted>"));
        assert!(!format!("{:?}", key()).contains("PRIVATE"));
    }

    #[test]
    fn star_and_class_survive() {
        let svc = service();
        let mut plugin = Scope::repository("vieux/sshfs", Actions::PULL);
        plugin.class = Some("plugin".into());
        let access = vec![Scope::repository("p/a", Actions::ALL), plugin.clone()];
        let tok = svc.issue("admin", &access).unwrap();
        let v = svc.verify(&tok.token, SERVICE).unwrap();
        assert_eq!(v.access, access);
        assert!(v.allows("p/a", Action::Delete));
        // A plugin-class grant is not a grant on the plain repository.
        assert!(!v.allows("vieux/sshfs", Action::Pull));
    }

    #[test]
    fn expiry_and_leeway() {
        let svc = service();
        let tok = svc.issue_at("a", &[], t(1000)).unwrap().token;
        assert!(svc.verify_at(&tok, SERVICE, t(1000)).is_ok());
        assert!(svc.verify_at(&tok, SERVICE, t(1300)).is_ok()); // within 30 s leeway
        assert!(svc.verify_at(&tok, SERVICE, t(1329)).is_ok());
        match svc.verify_at(&tok, SERVICE, t(1330)) {
            Err(TokenError::Expired { ago }) => assert_eq!(ago, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            svc.verify_at(&tok, SERVICE, t(100_000)),
            Err(TokenError::Expired { .. })
        ));
        // Issued "in the future" (client clock behind): tolerated within the leeway.
        assert!(svc.verify_at(&tok, SERVICE, t(971)).is_ok());
        assert!(matches!(
            svc.verify_at(&tok, SERVICE, t(969)),
            Err(TokenError::NotYetValid { .. })
        ));
    }

    #[test]
    fn custom_ttl() {
        let mut config = TokenConfig::new("berth", SERVICE);
        config.access_ttl = Duration::from_secs(60);
        config.leeway = Duration::ZERO;
        let svc = TokenService::new(key(), config);
        let tok = svc.issue_at("a", &[], t(0)).unwrap();
        assert_eq!(tok.expires_in, 60);
        assert!(svc.verify_at(&tok.token, SERVICE, t(59)).is_ok());
        assert!(svc.verify_at(&tok.token, SERVICE, t(60)).is_err());
    }

    #[test]
    fn wrong_audience_issuer_key_signature() {
        let svc = service();
        let tok = svc.issue("a", &[]).unwrap().token;
        let err = svc.verify(&tok, "other.example.com").unwrap_err();
        assert!(matches!(err, TokenError::WrongAudience { .. }), "{err:?}");
        assert!(err.to_string().contains("other.example.com"));

        let other_issuer = TokenService::new(key(), TokenConfig::new("someone-else", SERVICE));
        let tok2 = other_issuer.issue("a", &[]).unwrap().token;
        assert!(matches!(
            svc.verify(&tok2, SERVICE),
            Err(TokenError::WrongIssuer)
        ));

        let other_key = TokenService::new(
            SigningKey::generate().unwrap(),
            TokenConfig::new("berth", SERVICE),
        );
        let tok3 = other_key.issue("a", &[]).unwrap().token;
        assert!(matches!(
            svc.verify(&tok3, SERVICE),
            Err(TokenError::UnknownKey { .. })
        ));

        // Same kid, forged payload: the signature no longer matches.
        let mut parts: Vec<String> = tok.split('.').map(String::from).collect();
        let mut c = claims_of(&tok);
        c["access"] = serde_json::json!([{"type": "repository", "name": "x/y", "actions": ["*"]}]);
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = parts.join(".");
        assert!(matches!(
            svc.verify(&forged, SERVICE),
            Err(TokenError::BadSignature)
        ));

        // Signature of another key under our kid.
        let mut parts3: Vec<&str> = tok3.split('.').collect();
        let ours: Vec<&str> = tok.split('.').collect();
        parts3[0] = ours[0];
        parts3[1] = ours[1];
        assert!(matches!(
            svc.verify(&parts3.join("."), SERVICE),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let svc = service();
        let claims = serde_json::json!({
            "iss": "berth", "sub": "a", "aud": SERVICE, "exp": u64::MAX / 2, "nbf": 0, "iat": 0,
            "jti": "x", "access": [{"type": "repository", "name": "p/a", "actions": ["*"]}],
        });
        // HS256 with the public key as the secret (the classic algorithm confusion).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key().public_key_pem().as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            svc.verify(&hs, SERVICE),
            Err(TokenError::WrongAlgorithm(_))
        ));
        // alg "none".
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert!(matches!(
            svc.verify(&none, SERVICE),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn missing_claims_are_refused() {
        let svc = service();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key().key_id().to_string());
        for missing in ["exp", "nbf", "iss", "aud", "sub"] {
            let mut claims = serde_json::json!({
                "iss": "berth", "sub": "a", "aud": SERVICE, "exp": u64::MAX / 2, "nbf": 0,
                "iat": 0, "jti": "x",
            });
            claims.as_object_mut().unwrap().remove(missing);
            let tok = jsonwebtoken::encode(&header, &claims, &key().encoding).unwrap();
            assert!(
                matches!(svc.verify(&tok, SERVICE), Err(TokenError::Malformed(_))),
                "{missing}"
            );
        }
    }

    #[test]
    fn refresh_tokens() {
        let svc = service();
        let r = svc.issue_refresh_at("alice", t(10_000)).unwrap();
        assert_eq!(r.expires_in, 30 * 24 * 3600);
        assert_eq!(claims_of(&r.token)["typ"], "refresh");
        let v = svc.verify_refresh_at(&r.token, t(20_000)).unwrap();
        assert_eq!(v.subject, "alice");
        assert_eq!(v.issued_at, 10_000);
        assert_eq!(v.id, r.id);
        assert!(matches!(
            svc.verify_refresh_at(&r.token, t(10_000 + 31 * 24 * 3600)),
            Err(TokenError::Expired { .. })
        ));
        // Refresh and access tokens are not interchangeable.
        assert!(matches!(
            svc.verify_at(&r.token, SERVICE, t(20_000)),
            Err(TokenError::WrongType { .. })
        ));
        let access = svc.issue("alice", &[]).unwrap();
        assert!(matches!(
            svc.verify_refresh(&access.token),
            Err(TokenError::WrongType { .. })
        ));
        // Refresh tokens are bound to the service too.
        let other = TokenService::new(key(), TokenConfig::new("berth", "other"));
        assert!(matches!(
            other.verify_refresh(&svc.issue_refresh("a").unwrap().token),
            Err(TokenError::WrongAudience { .. })
        ));
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/token.key");
        let k1 = SigningKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pem = fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let k2 = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(k1.key_id(), k2.key_id());
        assert_eq!(k1.public_key_pem(), k2.public_key_pem());
        assert!(
            k1.public_key_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        // A token signed with the first instance verifies with the reloaded one.
        let a = TokenService::new(k1, TokenConfig::new("berth", SERVICE));
        let b = TokenService::new(k2, TokenConfig::new("berth", SERVICE));
        let tok = a.issue("x", &[]).unwrap().token;
        assert_eq!(b.verify(&tok, SERVICE).unwrap().subject, "x");
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        SigningKey::load_or_create(&path)
                            .unwrap()
                            .key_id()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn bad_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        fs::write(&path, "not a key").unwrap();
        let err = SigningKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, TokenError::KeyInvalid { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
        // An Ed25519 key is not accepted.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        fs::write(&path, ed.serialize_pem()).unwrap();
        assert!(matches!(
            SigningKey::load_or_create(&path),
            Err(TokenError::KeyInvalid { .. })
        ));
        // A directory where the file should be.
        let err = SigningKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, TokenError::KeyIo { .. }), "{err:?}");
        // The PEM of a generated key round-trips.
        let k = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&k.private_key_pem).unwrap();
        assert_eq!(k.key_id(), again.key_id());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn verify_never_panics(s in "\\PC{0,300}") {
            let _ = service().verify(&s, SERVICE);
            let _ = service().verify_refresh(&s);
        }

        #[test]
        fn verify_never_panics_on_jwt_shapes(
            a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,90}"
        ) {
            let _ = service().verify(&format!("{a}.{b}.{c}"), SERVICE);
        }

        #[test]
        fn access_round_trips(names in prop::collection::vec("[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", 0..5)) {
            let svc = service();
            let access: Vec<Scope> = crate::scope::merge_scopes(
                names.iter().map(|n| Scope::repository(n.clone(), Actions::PULL)).collect(),
            );
            let tok = svc.issue("u", &access).unwrap();
            prop_assert_eq!(svc.verify(&tok.token, SERVICE).unwrap().access, access);
        }
    }
}
