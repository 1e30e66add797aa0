//! Repository names, tags and references (`<name>:<tag>` / `<name>@<digest>`).
//!
//! The grammar is the OCI distribution-spec one:
//!
//! ```text
//! name      = component ("/" component)*            (at most MAX_NAME_LEN bytes)
//! component = [a-z0-9]+ (separator [a-z0-9]+)*
//! separator = "." | "_" | "__" | "-"+
//! tag       = [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//! ```
//!
//! The validators are hand-written byte scanners: no regex, no allocation on success, linear
//! time, and they never panic on arbitrary input.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Maximum length of a repository name, in bytes (all valid names are ASCII).
pub const MAX_NAME_LEN: usize = 255;

/// Maximum length of a tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// Why a repository name, tag or reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The payload is the rejected name.
    #[error(
        "invalid repository name {0:?}: use at most 255 characters of lowercase path components \
         ([a-z0-9] runs joined by '.', '_', '__' or '-') separated by '/', e.g. \"team/app\""
    )]
    InvalidRepository(String),
    /// The payload is the rejected tag.
    #[error(
        "invalid tag {0:?}: a tag is 1-128 characters of [A-Za-z0-9_.-] and must not start \
         with '.' or '-', e.g. \"v1.2.3\""
    )]
    InvalidTag(String),
    /// The reference contained ':' and so was read as a digest, which did not parse.
    #[error("invalid digest reference: {0}")]
    InvalidDigest(#[from] DigestError),
}

impl NameError {
    /// True when the reference was a malformed digest (maps to `DIGEST_INVALID`); otherwise the
    /// error is about a name (`NAME_INVALID`) or a tag (`TAG_INVALID` / `MANIFEST_INVALID`).
    pub fn is_digest_error(&self) -> bool {
        matches!(self, NameError::InvalidDigest(_))
    }
}

fn is_name_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Validate one path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &[u8]) -> bool {
    let mut i = 0;
    let n = c.len();
    loop {
        // One alphanumeric run, at least one byte.
        let run_start = i;
        while i < n && is_name_alnum(c[i]) {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        if i == n {
            return true;
        }
        // A separator, which must be followed by another run.
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < n && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < n && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Validate a repository name against the distribution-spec grammar (see module docs).
pub fn validate_repository(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('/').all(|c| valid_component(c.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidRepository(name.to_string()))
    }
}

/// Validate a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let ok = match b.split_first() {
        Some((&first, rest)) => {
            b.len() <= MAX_TAG_LEN
                && (first.is_ascii_alphanumeric() || first == b'_')
                && rest
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidTag(tag.to_string()))
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn is_digest(&self) -> bool {
        matches!(self, Reference::Digest(_))
    }

    pub fn as_tag(&self) -> Option<&str> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Tag(_) => None,
            Reference::Digest(d) => Some(d),
        }
    }
}

impl FromStr for Reference {
    type Err = NameError;

    /// Anything containing ':' is parsed as a digest (tags cannot contain ':'); everything else
    /// must be a valid tag.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            validate_tag(s)?;
            Ok(Reference::Tag(s.to_string()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::name_strategy;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid_names() {
        for good in [
            "a",
            "0",
            "library/ubuntu",
            "a/b/c/d/e",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo-bar",
            "foo---bar",
            "a.b_c__d-e--f",
            "team/app/manifests/blobs",
            "x1/2y/z3",
        ] {
            assert_eq!(validate_repository(good), Ok(()), "{good:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN);
        assert_eq!(validate_repository(&long), Ok(()));
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            "A",
            "Library/ubuntu",
            "foo___bar",
            "foo..bar",
            "foo._bar",
            "foo-_bar",
            "_foo",
            "foo_",
            "-foo",
            "foo-",
            ".foo",
            "foo.",
            "foo%2fbar",
            "foo bar",
            "foo:bar",
            "foo@bar",
            "é",
            "..",
            "a/../b",
        ] {
            let err = validate_repository(bad).unwrap_err();
            assert!(matches!(err, NameError::InvalidRepository(ref n) if n == bad));
            assert!(!err.is_digest_error());
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(validate_repository(&long).is_err());
    }

    #[test]
    fn tags() {
        for good in ["latest", "v1.2.3", "_x", "A-b_c.d", "0", &"a".repeat(128)] {
            assert_eq!(validate_tag(good), Ok(()), "{good:?}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", "a b", "ä", &"a".repeat(129)] {
            assert_eq!(
                validate_tag(bad),
                Err(NameError::InvalidTag(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn references() {
        let r: Reference = "latest".parse().unwrap();
        assert_eq!(r, Reference::Tag("latest".into()));
        assert_eq!(r.to_string(), "latest");
        assert_eq!(r.as_tag(), Some("latest"));

        let d = Digest::sha256(b"");
        let r: Reference = d.to_string().parse().unwrap();
        assert_eq!(r, Reference::Digest(d.clone()));
        assert_eq!(r.to_string(), d.to_string());
        assert!(r.is_digest());

        let e = "sha256:xyz".parse::<Reference>().unwrap_err();
        assert!(e.is_digest_error());
        assert!(e.to_string().contains("digest"));
        let e = "-bad".parse::<Reference>().unwrap_err();
        assert!(!e.is_digest_error());
        assert!(matches!(e, NameError::InvalidTag(_)));
    }

    #[test]
    fn messages_say_what_to_do() {
        let m = validate_repository("Bad").unwrap_err().to_string();
        assert!(m.contains("\"Bad\"") && m.contains("lowercase"), "{m}");
        let m = validate_tag(".x").unwrap_err().to_string();
        assert!(m.contains("\".x\"") && m.contains("128"), "{m}");
    }

    // ---- reference implementation: recursive descent straight from the grammar ----

    /// `name := component ("/" name)?` over the whole input, plus the length bound.
    fn ref_name(s: &[u8]) -> bool {
        fn name(s: &[u8]) -> bool {
            // Try every split point where a component ends.
            (1..=s.len()).any(|i| {
                component(&s[..i]) && (i == s.len() || (s[i] == b'/' && name(&s[i + 1..])))
            })
        }
        fn alnum_run(s: &[u8]) -> bool {
            !s.is_empty()
                && s.iter()
                    .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        fn separator(s: &[u8]) -> bool {
            s == b"." || s == b"_" || s == b"__" || (!s.is_empty() && s.iter().all(|&b| b == b'-'))
        }
        // component := run (sep run)*
        fn component(s: &[u8]) -> bool {
            if alnum_run(s) {
                return true;
            }
            // split as run + sep + component, trying every run/separator boundary
            (1..s.len()).any(|i| {
                alnum_run(&s[..i])
                    && (i + 1..s.len()).any(|j| separator(&s[i..j]) && component(&s[j..]))
            })
        }
        !s.is_empty() && s.len() <= MAX_NAME_LEN && name(s)
    }

    proptest! {
        #[test]
        fn generated_names_are_valid(name in name_strategy()) {
            prop_assert!(name.len() <= MAX_NAME_LEN);
            prop_assert_eq!(validate_repository(&name), Ok(()));
            prop_assert!(ref_name(name.as_bytes()));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = validate_repository(&s);
            let _ = validate_tag(&s);
            let _ = s.parse::<Reference>();
        }

        #[test]
        fn agrees_with_reference_impl(s in "[a-z0-9._/-]{0,24}") {
            prop_assert_eq!(validate_repository(&s).is_ok(), ref_name(s.as_bytes()), "{:?}", s);
        }

        #[test]
        fn agrees_with_reference_impl_mutated(name in name_strategy(), pos in any::<usize>(), c in "[a-zA-Z0-9._/%:-]") {
            let mut b = name.into_bytes();
            let i = pos % (b.len() + 1);
            b.splice(i..i, c.bytes());
            let s = String::from_utf8(b).unwrap();
            prop_assert_eq!(validate_repository(&s).is_ok(), ref_name(s.as_bytes()), "{:?}", s);
        }

        #[test]
        fn valid_tags_round_trip(tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
            prop_assert_eq!(validate_tag(&tag), Ok(()));
            let r: Reference = tag.parse().unwrap();
            prop_assert_eq!(r.to_string(), tag);
        }

        #[test]
        fn digest_references_round_trip(data in any::<Vec<u8>>(), sha512 in any::<bool>()) {
            let alg = if sha512 { crate::Algorithm::Sha512 } else { crate::Algorithm::Sha256 };
            let d = Digest::of(alg, &data);
            let r: Reference = d.to_string().parse().unwrap();
            prop_assert_eq!(r.to_string(), d.to_string());
            prop_assert_eq!(r, Reference::Digest(d));
        }
    }
}
