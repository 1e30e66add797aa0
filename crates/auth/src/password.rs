//! Password hashing and verification, and generated secrets.
//!
//! - [`hash_password`] makes an Argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) with
//!   the argon2 crate's defaults (the OWASP recommendation) and a random 16-byte salt.
//! - [`verify_password`] checks a password against a stored Argon2 PHC string or a bcrypt
//!   hash (`$2y$`, `$2b$`, `$2a$`, as found in imported htpasswd files).
//! - [`verify_login`] is what a login handler calls: given `None` (no such user) it still
//!   runs one Argon2id verification against a fixed dummy hash, so an unknown user takes
//!   as long to refuse as a wrong password for a known Argon2 user and the response time does
//!   not reveal which accounts exist. (An imported bcrypt user costs what its bcrypt cost
//!   says; rehash it with [`needs_rehash`] + [`hash_password`] after a successful login.)
//! - [`generate_secret`] makes robot secrets and the initial admin password: 43 characters
//!   of `[A-Za-z0-9]` from the operating system's RNG (≈ 256 bits), no shell-special
//!   characters and no leading `-`.
//!
//! Passwords longer than [`MAX_PASSWORD_LEN`] bytes are refused (never verified), and stored
//! hashes with absurd costs ([`MAX_BCRYPT_COST`], [`MAX_ARGON2_M_COST`],
//! [`MAX_ARGON2_T_COST`]) are reported as malformed, which bounds the work a login can cause.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Highest bcrypt cost verified (htpasswd's own maximum); a stored hash above it is refused
/// as malformed rather than tying up a CPU for minutes.
pub const MAX_BCRYPT_COST: u32 = 17;
/// Highest Argon2 memory cost verified, in KiB (256 MiB).
pub const MAX_ARGON2_M_COST: u32 = 256 * 1024;
/// Highest Argon2 time cost verified.
pub const MAX_ARGON2_T_COST: u32 = 16;
/// Length of a [`generate_secret`] string.
pub const SECRET_LEN: usize = 43;

const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// What went wrong hashing or checking a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty; choose a non-empty password")]
    Empty,
    #[error("the password is {len} bytes, more than the {max} accepted; choose a shorter one")]
    TooLong { len: usize, max: usize },
    #[error(
        "the stored password hash is neither an Argon2 PHC string ($argon2id$…) nor a bcrypt \
         hash ($2y$/$2b$/$2a$…); reset this account's password"
    )]
    UnknownHashFormat,
    #[error("the stored password hash is malformed ({0}); reset this account's password")]
    MalformedHash(String),
    #[error("hashing the password failed: {0}")]
    Hashing(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

fn check_len(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong {
            len: password.len(),
            max: MAX_PASSWORD_LEN,
        });
    }
    Ok(())
}

/// Hash a password to an Argon2id PHC string, for storage.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    check_len(password)?;
    let hash = argon2()
        .hash_password(password.as_bytes())
        .map_err(|e| match e {
            argon2::password_hash::Error::RngFailure => PasswordError::Random(e.to_string()),
            e => PasswordError::Hashing(e.to_string()),
        })?;
    Ok(hash.to_string())
}

/// Check `password` against a stored hash (Argon2 PHC string or bcrypt).
///
/// `Ok(false)` for a wrong, empty or over-long password; `Err` only when the stored hash
/// itself is unusable (the account needs its password reset).
pub fn verify_password(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let refuse = password.is_empty() || password.len() > MAX_PASSWORD_LEN;
    if stored.starts_with("$argon2") {
        let parsed =
            PasswordHash::new(stored).map_err(|e| PasswordError::MalformedHash(e.to_string()))?;
        let params =
            Params::try_from(&parsed).map_err(|e| PasswordError::MalformedHash(e.to_string()))?;
        if params.m_cost() > MAX_ARGON2_M_COST || params.t_cost() > MAX_ARGON2_T_COST {
            return Err(PasswordError::MalformedHash(format!(
                "Argon2 cost m={} KiB, t={} is above the m={MAX_ARGON2_M_COST}, \
                 t={MAX_ARGON2_T_COST} Berth accepts",
                params.m_cost(),
                params.t_cost()
            )));
        }
        if refuse {
            return Ok(false);
        }
        // The parameters come from the PHC string, not from `argon2()`.
        match argon2().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
            Err(e) => Err(PasswordError::MalformedHash(e.to_string())),
        }
    } else if is_bcrypt(stored) {
        let cost = stored
            .parse::<bcrypt::HashParts>()
            .map_err(|e| PasswordError::MalformedHash(e.to_string()))?
            .get_cost();
        if cost > MAX_BCRYPT_COST {
            return Err(PasswordError::MalformedHash(format!(
                "bcrypt cost {cost} is above the {MAX_BCRYPT_COST} Berth accepts"
            )));
        }
        if refuse {
            return Ok(false);
        }
        bcrypt::verify(password.as_bytes(), stored)
            .map_err(|e| PasswordError::MalformedHash(e.to_string()))
    } else {
        Err(PasswordError::UnknownHashFormat)
    }
}

fn is_bcrypt(stored: &str) -> bool {
    ["$2y$", "$2b$", "$2a$", "$2x$"]
        .iter()
        .any(|p| stored.starts_with(p))
}

/// The Argon2id hash unknown users are checked against (hashed once per process, with the
/// same parameters as real hashes, from a random password nobody knows).
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let secret = generate_secret().unwrap_or_else(|_| "berth-dummy-password".to_string());
        // Hashing a valid, short password with valid parameters cannot fail except for the
        // salt RNG; fall back to a fixed salt then (the hash is never meant to match).
        argon2()
            .hash_password(secret.as_bytes())
            .or_else(|_| argon2().hash_password_with_salt(secret.as_bytes(), b"berth-dummy-salt"))
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The login check: verify `password` against the user's stored hash, or — when there is no
/// such user (`stored` is `None`) — against a dummy hash, and return `false`.
///
/// This keeps the time of a refusal independent of whether the account exists. A stored hash
/// that is unusable counts as a refusal; use [`verify_password`] to tell it apart.
pub fn verify_login(password: &str, stored: Option<&str>) -> bool {
    match stored {
        Some(hash) => verify_password(password, hash).unwrap_or(false),
        None => {
            let _ = verify_password(password, dummy_hash());
            false
        }
    }
}

/// Whether a stored hash should be replaced by a fresh [`hash_password`] the next time the
/// user logs in successfully: bcrypt hashes, non-Argon2id hashes and Argon2 hashes with
/// weaker parameters than today's.
pub fn needs_rehash(stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" || parsed.version != Some(0x13) {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(p) => {
            p.m_cost() < Params::DEFAULT_M_COST
                || p.t_cost() < Params::DEFAULT_T_COST
                || p.p_cost() < Params::DEFAULT_P_COST
        }
        Err(_) => true,
    }
}

/// A random secret for robot accounts and the initial admin password: [`SECRET_LEN`]
/// characters of `[A-Za-z0-9]` from the OS RNG (rejection sampling, so uniform).
pub fn generate_secret() -> Result<String, PasswordError> {
    let mut out = String::with_capacity(SECRET_LEN);
    // 62 letters: accept bytes below 248 = 4 * 62, so `b % 62` is uniform.
    let limit = (256 / SECRET_ALPHABET.len() * SECRET_ALPHABET.len()) as u8;
    let mut buf = [0u8; 64];
    while out.len() < SECRET_LEN {
        getrandom::fill(&mut buf).map_err(|e| PasswordError::Random(e.to_string()))?;
        for &b in &buf {
            if b < limit && out.len() < SECRET_LEN {
                out.push(SECRET_ALPHABET[usize::from(b) % SECRET_ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    // `htpasswd -nbB -C 5 alice secret` (apache2-utils 2.4), the part after "alice:".
    const HTPASSWD_2Y: &str = "$2y$05$.DeotP/xBxdcSsRPzdd02e.Otbw3lq6X8otSW8k3Rl83bLuWjSUyW";

    #[test]
    fn argon2id_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h).unwrap());
        assert!(!verify_password("correct horsf", &h).unwrap());
        assert!(!verify_password("", &h).unwrap());
        assert!(!needs_rehash(&h));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash_password("correct horse").unwrap());
    }

    #[test]
    fn bcrypt_htpasswd_hashes_verify() {
        let h2b = bcrypt::hash("secret", 4).unwrap();
        assert!(h2b.starts_with("$2b$04$"));
        assert!(verify_password("secret", &h2b).unwrap());
        assert!(!verify_password("Secret", &h2b).unwrap());
        let h2y = h2b.replacen("$2b$", "$2y$", 1);
        assert!(verify_password("secret", &h2y).unwrap());
        assert!(needs_rehash(&h2y));
        // A hash made by Apache's htpasswd.
        assert!(verify_password("secret", HTPASSWD_2Y).unwrap());
        assert!(!verify_password("secreT", HTPASSWD_2Y).unwrap());
        assert!(!verify_password(&"x".repeat(MAX_PASSWORD_LEN + 1), HTPASSWD_2Y).unwrap());
    }

    #[test]
    fn broken_hashes_are_errors() {
        assert_eq!(
            verify_password("x", "plaintext"),
            Err(PasswordError::UnknownHashFormat)
        );
        assert_eq!(
            verify_password("x", ""),
            Err(PasswordError::UnknownHashFormat)
        );
        assert!(matches!(
            verify_password("x", "$argon2id$v=19$garbage"),
            Err(PasswordError::MalformedHash(_))
        ));
        assert!(matches!(
            verify_password("x", "$2y$05$short"),
            Err(PasswordError::MalformedHash(_))
        ));
        assert!(matches!(
            verify_password(&"x".repeat(2000), "$2y$05$short"),
            Err(PasswordError::MalformedHash(_))
        ));
        let costly = bcrypt::hash_with_salt("x", 4, [0; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY)
            .replacen("$04$", "$31$", 1);
        let err = verify_password("x", &costly).unwrap_err();
        assert!(err.to_string().contains("bcrypt cost 31"), "{err}");
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$\
                    AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let err = verify_password("x", huge).unwrap_err();
        assert!(err.to_string().contains("m=4194304"), "{err}");
        assert!(!verify_login("x", Some("plaintext")));
        assert!(needs_rehash("plaintext"));
        let err = verify_password("x", "plaintext").unwrap_err().to_string();
        assert!(err.contains("reset this account's password"), "{err}");
    }

    #[test]
    fn limits() {
        assert_eq!(hash_password(""), Err(PasswordError::Empty));
        let long = "p".repeat(MAX_PASSWORD_LEN + 1);
        assert!(matches!(
            hash_password(&long),
            Err(PasswordError::TooLong { .. })
        ));
        let h = hash_password("p").unwrap();
        assert!(!verify_password(&long, &h).unwrap());
        let max = "p".repeat(MAX_PASSWORD_LEN);
        let h = hash_password(&max).unwrap();
        assert!(verify_password(&max, &h).unwrap());
    }

    #[test]
    fn weaker_argon2_needs_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(verify_password("pw", &weak).unwrap());
        assert!(needs_rehash(&weak));
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default())
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(verify_password("pw", &argon2i).unwrap());
        assert!(needs_rehash(&argon2i));
    }

    #[test]
    fn unknown_users_cost_as_much_as_known_ones() {
        let h = hash_password("right").unwrap();
        assert!(verify_login("right", Some(&h)));
        assert!(!verify_login("wrong", Some(&h)));
        assert!(!verify_login("right", None));
        // The dummy hash is a real Argon2id hash with today's parameters, so checking against
        // it costs what checking a real user's hash costs.
        let dummy = PasswordHash::new(dummy_hash()).unwrap();
        let real = PasswordHash::new(&h).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert!(!needs_rehash(dummy_hash()));
        // And it is not skipped: an unknown user is not refused much faster than a known one
        // (best of several interleaved runs, loose bound: other tests share the CPU).
        let time = |f: &dyn Fn() -> bool| {
            let start = Instant::now();
            assert!(!f());
            start.elapsed()
        };
        let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            known = known.min(time(&|| verify_login("wrong", Some(&h))));
            unknown = unknown.min(time(&|| verify_login("wrong", None)));
        }
        assert!(
            unknown.as_secs_f64() > known.as_secs_f64() * 0.3,
            "unknown {unknown:?} vs known {known:?}"
        );
    }

    #[test]
    fn secrets() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let s = generate_secret().unwrap();
            assert_eq!(s.len(), SECRET_LEN);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()), "{s}");
            assert!(seen.insert(s));
        }
        // Every character of the alphabet shows up (uniformity smoke test).
        let all: HashSet<char> = seen.iter().flat_map(|s| s.chars()).collect();
        assert_eq!(all.len(), SECRET_ALPHABET.len());
    }
}
