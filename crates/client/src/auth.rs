//! `WWW-Authenticate` challenges (RFC 7235) and the Docker token protocol.

use std::collections::BTreeMap;

/// One challenge: scheme (lower-cased) and its parameters (keys lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c)
}

/// Parse a `WWW-Authenticate` value into its challenges. Never panics; skips garbage.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == ' ' || s[*i] == '\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < s.len() && is_tchar(s[*i]) {
            *i += 1;
        }
        s[start..*i].iter().collect()
    };
    while i < s.len() {
        skip_ws(&mut i);
        while i < s.len() && s[i] == ',' {
            i += 1;
            skip_ws(&mut i);
        }
        if i >= s.len() {
            break;
        }
        let t = token(&mut i);
        if t.is_empty() {
            i += 1; // garbage
            continue;
        }
        skip_ws(&mut i);
        if i < s.len() && s[i] == '=' {
            // a parameter of the current challenge
            i += 1;
            skip_ws(&mut i);
            let value = if i < s.len() && s[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote
                v
            } else {
                let start = i;
                while i < s.len() && s[i] != ',' && s[i] != ' ' {
                    i += 1;
                }
                s[start..i].iter().collect()
            };
            if let Some(c) = out.last_mut() {
                c.params.entry(t.to_ascii_lowercase()).or_insert(value);
            }
        } else {
            // a new challenge scheme (maybe followed by a token68 we ignore)
            out.push(Challenge {
                scheme: t.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// A token endpoint's answer.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl TokenResponse {
    pub fn bearer(&self) -> Option<&str> {
        self.token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.access_token.as_deref().filter(|t| !t.is_empty()))
    }
}

/// `repository:NAME:ACTIONS`
pub fn repo_scope(repository: &str, push: bool) -> String {
    if push {
        format!("repository:{repository}:pull,push")
    } else {
        format!("repository:{repository}:pull")
    }
}

/// The scope the registry asked for plus ours, deduplicated.
pub fn merge_scopes(challenge: Option<&str>, ours: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in challenge
        .into_iter()
        .flat_map(|c| c.split(' '))
        .map(str::to_string)
        .chain(ours.iter().cloned())
    {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_hub_style() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:library/nginx:pull,push")
        );
    }

    #[test]
    fn multiple_and_basic() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer realm="https://x/t", service=reg"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("service"), Some("reg"));
        let c = parse_challenges(r#"Basic realm="a \"q\" b""#);
        assert_eq!(c[0].param("realm"), Some("a \"q\" b"));
        assert_eq!(parse_challenges("Negotiate abc==")[0].scheme, "negotiate");
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            merge_scopes(
                Some("repository:a:pull"),
                &["repository:a:pull".into(), "repository:b:pull".into()]
            ),
            vec!["repository:a:pull", "repository:b:pull"]
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn bearer_round_trip(realm in "https://[a-z]{1,8}(:[0-9]{2,4})?/[a-z/]{0,10}",
                             service in "[a-zA-Z0-9.:-]{1,20}",
                             scope in "repository:[a-z/]{1,10}:pull(,push)?") {
            let h = format!("Bearer realm=\"{realm}\",service=\"{service}\",scope=\"{scope}\"");
            let c = parse_challenges(&h);
            prop_assert_eq!(c.len(), 1);
            prop_assert_eq!(c[0].param("realm"), Some(realm.as_str()));
            prop_assert_eq!(c[0].param("service"), Some(service.as_str()));
            prop_assert_eq!(c[0].param("scope"), Some(scope.as_str()));
        }
    }
}
