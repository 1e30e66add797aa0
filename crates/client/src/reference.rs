//! Image references parsed exactly as Docker parses them (`distribution/reference`
//! `ParseNormalizedNamed`):
//!
//! - the first path component is a registry only if it contains `.` or `:`, is `localhost`,
//!   or contains an upper-case letter; otherwise the registry is `docker.io`;
//! - `index.docker.io` is normalized to `docker.io`;
//! - `library/` is prepended only for single-component Docker Hub names;
//! - `[::1]:5000` style IPv6 registries, ports, `:tag` and `@digest` (both may be given).

use std::fmt;
use std::str::FromStr;

use berth_proto::{Digest, Reference, validate_repository, validate_tag};

/// The default registry (Docker Hub) as references name it.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API is actually served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key Docker writes for Docker Hub in `config.json`.
pub const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
const LEGACY_HUB: &str = "index.docker.io";
const MAX_FULL_NAME: usize = 255;

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry as written (normalized): `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/nginx`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a reference did not parse; the message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct RefError {
    pub input: String,
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> RefError {
    RefError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// `host[:port]` where host is a DNS-ish name (letters, digits, `-`, `.`), an IPv4 address
/// or a bracketed IPv6 address.
pub fn validate_registry(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.is_empty()
            || !inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
            || inside.parse::<std::net::Ipv6Addr>().is_err()
        {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn is_64_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ImageRef {
    /// Parse with Docker's normalization (see the module docs).
    pub fn parse(input: &str) -> Result<ImageRef, RefError> {
        if input.is_empty() {
            return Err(err(input, "it is empty"));
        }
        // `name[:tag][@digest]`
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let d: Digest = d.parse().map_err(|e| err(input, format!("{e}")))?;
                (n, Some(d))
            }
            None => (input, None),
        };
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        // A ':' after the last '/' starts the tag, unless it is the port of a bare
        // `[v6]:port`-only string (which has no repository anyway and fails below).
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|e| err(input, e.to_string()))?;
        }
        if name.is_empty() {
            return Err(err(input, "it has no repository name"));
        }
        if name.len() > MAX_FULL_NAME {
            return Err(err(
                input,
                format!("the name is longer than {MAX_FULL_NAME} characters"),
            ));
        }
        let (mut registry, mut repository) = match name.find('/') {
            Some(i) => {
                let first = &name[..i];
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.to_lowercase() != first
                {
                    (first.to_string(), name[i + 1..].to_string())
                } else {
                    (DOCKER_HUB.to_string(), name.to_string())
                }
            }
            None => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !validate_registry(&registry) {
            return Err(err(
                input,
                format!(
                    "{registry:?} is not a valid registry host (host[:port], IPv4, or [IPv6][:port])"
                ),
            ));
        }
        if registry == LEGACY_HUB {
            registry = DOCKER_HUB.to_string();
        }
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.to_lowercase() != repository {
            return Err(err(input, "repository name must be lowercase"));
        }
        if tag.is_none() && digest.is_none() && is_64_hex(name) {
            return Err(err(
                input,
                "cannot specify 64-byte hexadecimal strings as a repository name",
            ));
        }
        validate_repository(&repository).map_err(|e| err(input, e.to_string()))?;
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The manifest reference to request: the digest if given, else the tag, else `latest`.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".to_string()),
        }
    }

    /// The host whose API serves this registry (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with another reference.
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Docker's short form: `nginx:latest` for `docker.io/library/nginx:latest`.
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

/// The API host for a registry name (`docker.io` → `registry-1.docker.io`).
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == LEGACY_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

impl FromStr for ImageRef {
    type Err = RefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Split `host[:port]` into host (brackets removed for IPv6) and port.
pub fn split_host_port(registry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = registry.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
        return (registry, None);
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (registry, None),
        },
        _ => (registry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_normalization() {
        let cases = [
            ("nginx", "docker.io", "library/nginx", None),
            ("nginx:1.25", "docker.io", "library/nginx", Some("1.25")),
            ("user/app", "docker.io", "user/app", None),
            ("docker.io/nginx", "docker.io", "library/nginx", None),
            ("index.docker.io/nginx", "docker.io", "library/nginx", None),
            (
                "docker.io/library/nginx",
                "docker.io",
                "library/nginx",
                None,
            ),
            ("localhost/app", "localhost", "app", None),
            ("localhost:5000/app:v1", "localhost:5000", "app", Some("v1")),
            ("example.com/app", "example.com", "app", None),
            (
                "example.com:443/a/b/c:t",
                "example.com:443",
                "a/b/c",
                Some("t"),
            ),
            (
                "10.0.0.1:5000/library/nginx",
                "10.0.0.1:5000",
                "library/nginx",
                None,
            ),
            ("[::1]:5000/app:x", "[::1]:5000", "app", Some("x")),
            ("[2001:db8::1]/app", "[2001:db8::1]", "app", None),
            ("Registry/app", "Registry", "app", None),
            (
                "harbor.local/library/nginx:latest",
                "harbor.local",
                "library/nginx",
                Some("latest"),
            ),
        ];
        for (input, reg, repo, tag) in cases {
            let r = p(input);
            assert_eq!(r.registry, reg, "{input}");
            assert_eq!(r.repository, repo, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
        }
    }

    #[test]
    fn digests() {
        let d = Digest::sha256(b"x");
        let r = p(&format!("nginx@{d}"));
        assert_eq!(r.digest, Some(d.clone()));
        assert_eq!(r.reference(), Reference::Digest(d.clone()));
        let r = p(&format!("h:5000/a:t@{d}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.reference(), Reference::Digest(d));
        assert_eq!(p("a").reference(), Reference::Tag("latest".into()));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "UPPER",
            "docker.io/UPPER",
            "a:",
            "a:-x",
            "a@sha256:xyz",
            "/a",
            "a//b",
            "a/",
            "[::1/app",
            "[zz]:5000/app",
            "-bad.com/app",
            "host:port/app",
            &"a".repeat(64).replace('a', "b"),
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn familiar_and_display() {
        assert_eq!(p("nginx").to_string(), "docker.io/library/nginx");
        assert_eq!(p("nginx:1").familiar(), "nginx:1");
        assert_eq!(p("user/app").familiar(), "user/app");
        assert_eq!(p("h:1/a:b").familiar(), "h:1/a:b");
        assert_eq!(p("nginx").api_host(), DOCKER_HUB_API);
        assert_eq!(split_host_port("[::1]:5000"), ("::1", Some(5000)));
        assert_eq!(split_host_port("h:5000"), ("h", Some(5000)));
        assert_eq!(split_host_port("h"), ("h", None));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}"
    }

    fn registry() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                "[a-z][a-z0-9]{0,8}\\.[a-z]{2,4}",
                proptest::option::of(1u16..)
            )
                .prop_map(|(h, p)| match p {
                    Some(p) => format!("{h}:{p}"),
                    None => h,
                }),
            (1u16..).prop_map(|p| format!("localhost:{p}")),
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(ip, p)| format!("{}:{p}", std::net::Ipv4Addr::from(ip))),
            (any::<[u16; 8]>(), proptest::option::of(1u16..)).prop_map(|(ip, p)| {
                let v6 = std::net::Ipv6Addr::from(ip);
                match p {
                    Some(p) => format!("[{v6}]:{p}"),
                    None => format!("[{v6}]"),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(reg in registry(), comps in proptest::collection::vec(component(), 1..4),
                       tag in proptest::option::of("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}"),
                       digest in proptest::option::of(any::<Vec<u8>>())) {
            let repo = comps.join("/");
            let mut s = format!("{reg}/{repo}");
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            let digest = digest.map(|d| Digest::sha256(&d));
            if let Some(d) = &digest { s.push('@'); s.push_str(&d.to_string()); }
            prop_assume!(s.split('@').next().unwrap().len() <= 255);
            let r = ImageRef::parse(&s).unwrap();
            prop_assert_eq!(&r.registry, &reg);
            prop_assert_eq!(&r.repository, &repo);
            prop_assert_eq!(&r.tag, &tag);
            prop_assert_eq!(&r.digest, &digest);
            prop_assert_eq!(r.to_string(), s.clone());
            prop_assert_eq!(ImageRef::parse(&r.familiar()).unwrap(), r);
        }

        #[test]
        fn hub_short_names(comps in proptest::collection::vec(component(), 1..3)) {
            let name = comps.join("/");
            prop_assume!(!comps[0].contains('.') && comps[0] != "localhost");
            let r = ImageRef::parse(&name).unwrap();
            prop_assert_eq!(r.registry.as_str(), DOCKER_HUB);
            if comps.len() == 1 {
                prop_assert_eq!(r.repository, format!("library/{name}"));
            } else {
                prop_assert_eq!(r.repository, name);
            }
        }

        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = ImageRef::parse(&s);
        }

        #[test]
        fn never_panics_refchars(s in "[a-zA-Z0-9:/@.\\[\\]_-]{0,40}") {
            if let Ok(r) = ImageRef::parse(&s) {
                // Whatever parses re-parses to itself.
                prop_assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
