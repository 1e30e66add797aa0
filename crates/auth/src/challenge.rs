//! `WWW-Authenticate` challenges the registry sends, and `Authorization` headers it receives.
//!
//! - [`BearerChallenge`] builds
//!   `Bearer realm="https://HOST/service/token",service="HOST",scope="repository:a/b:pull"`
//!   (optionally with `error="insufficient_scope"` or `error="invalid_token"`, RFC 6750 §3);
//!   [`basic_challenge`] builds `Basic realm="…"` for clients that only do Basic.
//! - [`parse_authorization`] reads `Basic base64(user:password)` (RFC 7617) and
//!   `Bearer token` (RFC 6750) request headers. Input is raw header bytes (a header value
//!   need not be UTF-8); it is bounded ([`MAX_AUTHORIZATION_LEN`]), the scheme is
//!   case-insensitive, Base64 padding is optional, and the decoded credentials must be
//!   UTF-8 with a non-empty user name free of control characters.
//!
//! [`Credentials`] never prints a password or token in its `Debug` output.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::scope::{Scope, format_scopes};

/// Longest `Authorization` header value accepted, in bytes.
pub const MAX_AUTHORIZATION_LEN: usize = 8 * 1024;

/// Standard Base64, padding optional on input, emitted on output.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `error` parameter of a Bearer challenge (RFC 6750 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError {
    /// The token is malformed, expired, badly signed or for another service.
    InvalidToken,
    /// The token is valid but does not grant the action.
    InsufficientScope,
}

impl ChallengeError {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeError::InvalidToken => "invalid_token",
            ChallengeError::InsufficientScope => "insufficient_scope",
        }
    }
}

/// A `WWW-Authenticate: Bearer …` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge<'a> {
    /// The token endpoint, e.g. `https://registry.example.com/service/token`.
    pub realm: &'a str,
    /// The service name clients send back as `service=` and tokens carry as `aud`.
    pub service: &'a str,
    /// What the refused request needed; empty for `GET /v2/` (no `scope` parameter).
    pub scopes: &'a [Scope],
    pub error: Option<ChallengeError>,
}

impl BearerChallenge<'_> {
    /// The header value, e.g.
    /// `Bearer realm="https://h/service/token",service="h",scope="repository:a:pull"`.
    pub fn to_header_value(&self) -> String {
        let mut out = String::from("Bearer ");
        push_param(&mut out, "realm", self.realm);
        out.push(',');
        push_param(&mut out, "service", self.service);
        if !self.scopes.is_empty() {
            out.push(',');
            push_param(&mut out, "scope", &format_scopes(self.scopes));
        }
        if let Some(e) = self.error {
            out.push(',');
            push_param(&mut out, "error", e.as_str());
        }
        out
    }
}

impl fmt::Display for BearerChallenge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

/// `Bearer realm="…",service="…"[,scope="…"]` — shorthand for [`BearerChallenge`].
pub fn bearer_challenge(realm: &str, service: &str, scopes: &[Scope]) -> String {
    BearerChallenge {
        realm,
        service,
        scopes,
        error: None,
    }
    .to_header_value()
}

/// `Basic realm="…"`.
pub fn basic_challenge(realm: &str) -> String {
    let mut out = String::from("Basic ");
    push_param(&mut out, "realm", realm);
    out
}

/// `name="value"` with `"` and `\` escaped (RFC 9110 quoted-string) and control characters
/// dropped, so the result is always a valid header value.
fn push_param(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Credentials from an `Authorization` request header.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic base64(username:password)`.
    Basic { username: String, password: String },
    /// `Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

/// Why an `Authorization` header was not understood. Messages never repeat the
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "the Authorization header is {len} bytes, more than the {max} accepted; send a shorter \
         token or credentials"
    )]
    TooLong { len: usize, max: usize },
    #[error(
        "the Authorization header uses an unsupported scheme; send \"Basic <base64 user:password>\" \
         or \"Bearer <token>\""
    )]
    UnsupportedScheme,
    #[error("the Authorization header has a scheme but no credentials after it")]
    Missing,
    #[error(
        "the Basic credentials are not valid Base64; encode \"user:password\" with standard Base64"
    )]
    Base64,
    #[error("the Basic credentials are not valid UTF-8 text")]
    Utf8,
    #[error("the Basic credentials have no ':' between user name and password")]
    NoColon,
    #[error("the Basic credentials have an empty user name")]
    EmptyUsername,
    #[error("the user name contains control characters")]
    ControlCharacter,
    #[error(
        "the Bearer token contains characters outside the token68 set (letters, digits, \
         \"-._~+/\" and trailing \"=\"); send the token exactly as the token endpoint returned it"
    )]
    BadToken,
}

/// Parse an `Authorization` header value (raw bytes: header values need not be UTF-8).
pub fn parse_authorization(value: impl AsRef<[u8]>) -> Result<Credentials, CredentialsError> {
    let value = value.as_ref();
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(CredentialsError::TooLong {
            len: value.len(),
            max: MAX_AUTHORIZATION_LEN,
        });
    }
    let value = trim_ascii_spaces(value);
    let (scheme, rest) = match value.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&value[..i], trim_ascii_spaces(&value[i..])),
        None => (value, &value[value.len()..]),
    };
    if scheme.eq_ignore_ascii_case(b"basic") {
        parse_basic(rest)
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        parse_bearer(rest)
    } else {
        Err(CredentialsError::UnsupportedScheme)
    }
}

fn parse_basic(encoded: &[u8]) -> Result<Credentials, CredentialsError> {
    if encoded.is_empty() {
        return Err(CredentialsError::Missing);
    }
    let decoded = BASIC_B64
        .decode(encoded)
        .map_err(|_| CredentialsError::Base64)?;
    let decoded = String::from_utf8(decoded).map_err(|_| CredentialsError::Utf8)?;
    let (username, password) = decoded.split_once(':').ok_or(CredentialsError::NoColon)?;
    if username.is_empty() {
        return Err(CredentialsError::EmptyUsername);
    }
    if username.chars().any(char::is_control) {
        return Err(CredentialsError::ControlCharacter);
    }
    Ok(Credentials::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

fn parse_bearer(token: &[u8]) -> Result<Credentials, CredentialsError> {
    if token.is_empty() {
        return Err(CredentialsError::Missing);
    }
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    if body_len == 0
        || !token[..body_len].iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
    {
        return Err(CredentialsError::BadToken);
    }
    // Every byte is ASCII here.
    let token = String::from_utf8(token.to_vec()).map_err(|_| CredentialsError::BadToken)?;
    Ok(Credentials::Bearer(token))
}

fn trim_ascii_spaces(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// `Basic base64(username:password)` — the header value a client sends.
pub fn basic_authorization(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASIC_B64.encode(format!("{username}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Actions;
    use proptest::prelude::*;

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            bearer_challenge("https://reg.example/service/token", "reg.example", &[]),
            r#"Bearer realm="https://reg.example/service/token",service="reg.example""#
        );
        let scopes = [
            Scope::repository("private-prj/nginx", Actions::PULL_PUSH),
            Scope::catalog(),
        ];
        assert_eq!(
            bearer_challenge("https://h:8443/service/token", "h:8443", &scopes),
            r#"Bearer realm="https://h:8443/service/token",service="h:8443",scope="repository:private-prj/nginx:pull,push registry:catalog:*""#
        );
        let c = BearerChallenge {
            realm: "https://h/t",
            service: "h",
            scopes: &scopes[..1],
            error: Some(ChallengeError::InsufficientScope),
        };
        assert_eq!(
            c.to_string(),
            r#"Bearer realm="https://h/t",service="h",scope="repository:private-prj/nginx:pull,push",error="insufficient_scope""#
        );
    }

    #[test]
    fn challenge_values_are_escaped() {
        assert_eq!(
            basic_challenge("Berth \"main\"\\\r\nX-Injected: 1"),
            r#"Basic realm="Berth \"main\"\\X-Injected: 1""#
        );
    }

    #[test]
    fn parses_basic() {
        let header = basic_authorization("alice", "s3cret:with:colons");
        assert_eq!(header, "Basic YWxpY2U6czNjcmV0OndpdGg6Y29sb25z");
        assert_eq!(
            parse_authorization(&header).unwrap(),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cret:with:colons".into()
            }
        );
        // Case-insensitive scheme, extra spaces, no padding.
        let c = parse_authorization("bAsIc    YWxpY2U6eA  ").unwrap();
        assert_eq!(
            c,
            Credentials::Basic {
                username: "alice".into(),
                password: "x".into()
            }
        );
        assert_eq!(
            parse_authorization("Basic YWxpY2U6eA==").unwrap(),
            parse_authorization("Basic YWxpY2U6eA").unwrap()
        );
        // Empty password is allowed (the password check refuses it), UTF-8 names too.
        assert_eq!(
            parse_authorization(basic_authorization("zoë", "")).unwrap(),
            Credentials::Basic {
                username: "zoë".into(),
                password: String::new()
            }
        );
        // Robot account names contain '$' and '+'.
        let c = parse_authorization(basic_authorization("robot$ci+deploy", "pw")).unwrap();
        assert!(matches!(c, Credentials::Basic { username, .. } if username == "robot$ci+deploy"));
    }

    #[test]
    fn basic_errors() {
        use CredentialsError as E;
        let b64 = |s: &[u8]| BASIC_B64.encode(s);
        assert_eq!(parse_authorization("Basic"), Err(E::Missing));
        assert_eq!(parse_authorization("Basic   "), Err(E::Missing));
        assert_eq!(parse_authorization("Basic !!!"), Err(E::Base64));
        assert_eq!(
            parse_authorization(format!("Basic {}", b64(b"\xff\xfe:x"))),
            Err(E::Utf8)
        );
        assert_eq!(
            parse_authorization(format!("Basic {}", b64(b"nocolon"))),
            Err(E::NoColon)
        );
        assert_eq!(
            parse_authorization(format!("Basic {}", b64(b":pw"))),
            Err(E::EmptyUsername)
        );
        assert_eq!(
            parse_authorization(format!("Basic {}", b64(b"a\nb:pw"))),
            Err(E::ControlCharacter)
        );
        assert_eq!(parse_authorization("Digest x=y"), Err(E::UnsupportedScheme));
        assert_eq!(parse_authorization(""), Err(E::UnsupportedScheme));
        assert_eq!(
            parse_authorization(b"\xff\xff abc"),
            Err(E::UnsupportedScheme)
        );
        let long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_LEN));
        assert!(matches!(parse_authorization(long), Err(E::TooLong { .. })));
    }

    #[test]
    fn parses_bearer() {
        assert_eq!(
            parse_authorization("Bearer eyJhbGciOi.eyJpc3Mi.sig-_~+/=").unwrap(),
            Credentials::Bearer("eyJhbGciOi.eyJpc3Mi.sig-_~+/=".into())
        );
        assert_eq!(
            parse_authorization("bearer abc").unwrap(),
            Credentials::Bearer("abc".into())
        );
        use CredentialsError as E;
        assert_eq!(parse_authorization("Bearer"), Err(E::Missing));
        assert_eq!(parse_authorization("Bearer ==="), Err(E::BadToken));
        assert_eq!(parse_authorization("Bearer a=b"), Err(E::BadToken));
        assert_eq!(parse_authorization("Bearer a b"), Err(E::BadToken));
        assert_eq!(parse_authorization("Bearer a\"b"), Err(E::BadToken));
        assert_eq!(parse_authorization(b"Bearer \xc3\xa9"), Err(E::BadToken));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = parse_authorization(basic_authorization("alice", "hunter2")).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("alice") && !d.contains("hunter2"), "{d}");
        let c = Credentials::Bearer("tok3n".into());
        assert!(!format!("{c:?}").contains("tok3n"));
        // Error messages never carry the credentials either.
        let e = parse_authorization("Bearer se\"cret").unwrap_err();
        assert!(!e.to_string().contains("se\"cret"));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_authorization(&bytes);
            let mut basic = b"Basic ".to_vec();
            basic.extend_from_slice(&bytes);
            let _ = parse_authorization(&basic);
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend_from_slice(&bytes);
            let _ = parse_authorization(&bearer);
        }

        #[test]
        fn basic_round_trip(user in "[^:\\p{Cc}]{1,40}", pass in "\\PC{0,40}") {
            let parsed = parse_authorization(basic_authorization(&user, &pass)).unwrap();
            prop_assert_eq!(parsed, Credentials::Basic { username: user, password: pass });
        }

        #[test]
        fn bearer_round_trip(token in "[A-Za-z0-9._~+/-]{1,100}={0,2}") {
            let parsed = parse_authorization(format!("Bearer {token}")).unwrap();
            prop_assert_eq!(parsed, Credentials::Bearer(token));
        }

        #[test]
        fn challenges_are_valid_header_values(realm in "\\PC{0,40}", service in ".{0,40}") {
            let v = bearer_challenge(&realm, &service, &[Scope::catalog()]);
            prop_assert!(!v.chars().any(char::is_control));
            let v = basic_challenge(&realm);
            prop_assert!(!v.chars().any(char::is_control));
        }
    }
}
