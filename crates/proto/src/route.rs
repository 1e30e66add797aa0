//! The one router for every path under `/v2/`.
//!
//! Repository names may contain `/` and even path components named `manifests`, `blobs`,
//! `tags`, ... so a path cannot be matched with fixed segments. The endpoint is identified by
//! the *last* two or three `/`-separated segments only; everything before is the name:
//!
//! | path after `/v2/`                    | route                                 |
//! |--------------------------------------|---------------------------------------|
//! | (empty)                              | [`V2Route::Base`]                     |
//! | `_catalog`                           | [`V2Route::Catalog`]                  |
//! | `<name>/tags/list`                   | [`V2Route::Tags`]                     |
//! | `<name>/manifests/<reference>`       | [`V2Route::Manifest`]                 |
//! | `<name>/blobs/<digest>`              | [`V2Route::Blob`]                     |
//! | `<name>/blobs/uploads` or `.../`     | [`V2Route::UploadStart`]              |
//! | `<name>/blobs/uploads/<id>`          | [`V2Route::Upload`]                   |
//! | `<name>/referrers/<digest>`          | [`V2Route::Referrers`]                |
//!
//! The segment before the last one is always distinct per endpoint (`tags`, `manifests`,
//! `blobs`, `uploads`, `referrers`), so there is never an ambiguity; e.g.
//! `a/manifests/b/manifests/latest` is the manifest `latest` of repository `a/manifests/b`.

use crate::name::{NameError, validate_repository};

/// Maximum length of an upload session id (they become file names).
pub const MAX_UPLOAD_ID_LEN: usize = 128;

/// A parsed `/v2/` route. `reference`, `digest` and `id` are the raw path segments: the
/// handler parses them (so it can answer `DIGEST_INVALID`/`TAG_INVALID` rather than 404).
/// `name` has passed [`validate_repository`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>` (reference raw, unvalidated, non-empty)
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>` (digest raw, unvalidated, non-empty)
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/` (with or without the trailing slash)
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`; `id` is 1..=128 of `[A-Za-z0-9-]`
    Upload { name: String, id: String },
    /// `/v2/<name>/referrers/<digest>` (digest raw, unvalidated, non-empty)
    Referrers { name: String, digest: String },
}

impl V2Route {
    /// The repository name, for routes that have one.
    pub fn name(&self) -> Option<&str> {
        match self {
            V2Route::Base | V2Route::Catalog => None,
            V2Route::Tags { name }
            | V2Route::Manifest { name, .. }
            | V2Route::Blob { name, .. }
            | V2Route::UploadStart { name }
            | V2Route::Upload { name, .. }
            | V2Route::Referrers { name, .. } => Some(name),
        }
    }

    /// The path after `/v2/` that [`parse_v2_path`] maps back to this route (`UploadStart`
    /// renders with the trailing slash).
    pub fn to_path(&self) -> String {
        match self {
            V2Route::Base => String::new(),
            V2Route::Catalog => "_catalog".to_string(),
            V2Route::Tags { name } => format!("{name}/tags/list"),
            V2Route::Manifest { name, reference } => format!("{name}/manifests/{reference}"),
            V2Route::Blob { name, digest } => format!("{name}/blobs/{digest}"),
            V2Route::UploadStart { name } => format!("{name}/blobs/uploads/"),
            V2Route::Upload { name, id } => format!("{name}/blobs/uploads/{id}"),
            V2Route::Referrers { name, digest } => format!("{name}/referrers/{digest}"),
        }
    }
}

/// Why a `/v2/` path did not route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No endpoint matches: answer a plain 404.
    #[error(
        "no registry endpoint matches this path; expected /v2/<name>/(manifests|blobs|referrers)/..., \
         /v2/<name>/blobs/uploads/, /v2/<name>/tags/list or /v2/_catalog"
    )]
    NotFound,
    /// The endpoint matched but the repository name is invalid (answer `NAME_INVALID`).
    #[error(transparent)]
    InvalidName(NameError),
}

fn valid_upload_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_UPLOAD_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Route `rest`, the raw (not percent-decoded, no query string) path after `/v2/`.
///
/// A `%` anywhere in the name makes it invalid (names never need escaping).
pub fn parse_v2_path(rest: &str) -> Result<V2Route, RouteError> {
    match rest {
        "" => return Ok(V2Route::Base),
        "_catalog" => return Ok(V2Route::Catalog),
        _ => {}
    }

    // Peel off up to three trailing segments: `prefix/s1/s2/s3` (s3 is the last).
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    let (head2, second) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    // `third` exists only when there is a name before it.
    let third = head2.rsplit_once('/');

    enum Kind {
        Tags,
        Manifest,
        Blob,
        UploadStart,
        Upload,
        Referrers,
    }

    // (name, kind, last segment)
    let (name, kind) = match (second, last) {
        ("tags", "list") => (head2, Kind::Tags),
        ("manifests", _) => (head2, Kind::Manifest),
        ("referrers", _) => (head2, Kind::Referrers),
        ("blobs", "uploads") => (head2, Kind::UploadStart),
        ("blobs", _) => (head2, Kind::Blob),
        ("uploads", _) => match third {
            Some((name, "blobs")) => (
                name,
                if last.is_empty() {
                    Kind::UploadStart
                } else {
                    Kind::Upload
                },
            ),
            _ => return Err(RouteError::NotFound),
        },
        _ => return Err(RouteError::NotFound),
    };

    if name.is_empty() {
        return Err(RouteError::NotFound);
    }
    if last.is_empty() && !matches!(kind, Kind::UploadStart) {
        return Err(RouteError::NotFound);
    }
    if matches!(kind, Kind::Upload) && !valid_upload_id(last) {
        return Err(RouteError::NotFound);
    }
    validate_repository(name).map_err(RouteError::InvalidName)?;

    let name = name.to_string();
    let last = last.to_string();
    Ok(match kind {
        Kind::Tags => V2Route::Tags { name },
        Kind::Manifest => V2Route::Manifest {
            name,
            reference: last,
        },
        Kind::Blob => V2Route::Blob { name, digest: last },
        Kind::UploadStart => V2Route::UploadStart { name },
        Kind::Upload => V2Route::Upload { name, id: last },
        Kind::Referrers => V2Route::Referrers { name, digest: last },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{digest_strategy, name_strategy};
    use proptest::prelude::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn basic_routes() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            ("", V2Route::Base),
            ("_catalog", V2Route::Catalog),
            ("a/tags/list", V2Route::Tags { name: s("a") }),
            (
                "library/ubuntu/manifests/latest",
                V2Route::Manifest {
                    name: s("library/ubuntu"),
                    reference: s("latest"),
                },
            ),
            (
                &format!("a/b/blobs/{d}"),
                V2Route::Blob {
                    name: s("a/b"),
                    digest: s(d),
                },
            ),
            ("a/blobs/uploads/", V2Route::UploadStart { name: s("a") }),
            ("a/blobs/uploads", V2Route::UploadStart { name: s("a") }),
            (
                "a/blobs/uploads/0f1e-AB",
                V2Route::Upload {
                    name: s("a"),
                    id: s("0f1e-AB"),
                },
            ),
            (
                &format!("a/referrers/{d}"),
                V2Route::Referrers {
                    name: s("a"),
                    digest: s(d),
                },
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_v2_path(path), Ok(want), "{path:?}");
        }
    }

    #[test]
    fn marker_named_components() {
        let cases = [
            (
                "a/manifests/b/manifests/latest",
                V2Route::Manifest {
                    name: s("a/manifests/b"),
                    reference: s("latest"),
                },
            ),
            (
                "manifests/manifests/manifests",
                V2Route::Manifest {
                    name: s("manifests"),
                    reference: s("manifests"),
                },
            ),
            (
                "blobs/blobs/uploads/blobs/uploads/x",
                V2Route::Upload {
                    name: s("blobs/blobs/uploads"),
                    id: s("x"),
                },
            ),
            (
                "tags/list/tags/list",
                V2Route::Tags {
                    name: s("tags/list"),
                },
            ),
            (
                "blobs/uploads/blobs/uploads/",
                V2Route::UploadStart {
                    name: s("blobs/uploads"),
                },
            ),
            (
                "a/blobs/uploads/blobs/sha256:x",
                V2Route::Blob {
                    name: s("a/blobs/uploads"),
                    digest: s("sha256:x"),
                },
            ),
            (
                "referrers/referrers/referrers",
                V2Route::Referrers {
                    name: s("referrers"),
                    digest: s("referrers"),
                },
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_v2_path(path), Ok(want), "{path:?}");
        }
    }

    #[test]
    fn not_found() {
        for path in [
            "/",
            "_catalog/",
            "a",
            "a/",
            "a/tags",
            "a/tags/list/",
            "a/tags/other",
            "a/manifests/",
            "a/manifests",
            "manifests/latest",
            "/manifests/latest",
            "a/blobs/",
            "a/referrers/",
            "a/blobs/uploads/abc/",
            "a/blobs/uploads/a_b",
            "a/blobs/uploads/a.b",
            "a/blobs/uploads/%2e%2e",
            "a/uploads/x",
            "uploads/x",
            "blobs/uploads/x",
            "a/other/x",
        ] {
            assert_eq!(parse_v2_path(path), Err(RouteError::NotFound), "{path:?}");
        }
        let long = "a".repeat(MAX_UPLOAD_ID_LEN + 1);
        assert_eq!(
            parse_v2_path(&format!("a/blobs/uploads/{long}")),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn invalid_names() {
        for path in [
            "A/manifests/latest",
            "a%2fb/manifests/latest",
            "a//b/tags/list",
            "/a/tags/list",
            "a/../b/blobs/uploads/",
            "a_/referrers/sha256:0",
            "_catalog/tags/list",
        ] {
            assert!(
                matches!(
                    parse_v2_path(path),
                    Err(RouteError::InvalidName(NameError::InvalidRepository(_)))
                ),
                "{path:?}"
            );
        }
        let long = "a".repeat(256);
        assert!(matches!(
            parse_v2_path(&format!("{long}/tags/list")),
            Err(RouteError::InvalidName(_))
        ));
    }

    #[test]
    fn names_accessor() {
        assert_eq!(parse_v2_path("x/tags/list").unwrap().name(), Some("x"));
        assert_eq!(parse_v2_path("").unwrap().name(), None);
    }

    fn route_strategy() -> impl Strategy<Value = V2Route> {
        let reference = prop_oneof![
            "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
            digest_strategy().prop_map(|d| d.to_string()),
            // raw and unvalidated: anything without '/' goes through
            "[^/]{1,10}",
        ];
        prop_oneof![
            Just(V2Route::Base),
            Just(V2Route::Catalog),
            name_strategy().prop_map(|name| V2Route::Tags { name }),
            (name_strategy(), reference.clone())
                .prop_map(|(name, reference)| V2Route::Manifest { name, reference }),
            (name_strategy(), reference.clone())
                .prop_filter("that is an upload", |(_, r)| r != "uploads")
                .prop_map(|(name, digest)| V2Route::Blob { name, digest }),
            name_strategy().prop_map(|name| V2Route::UploadStart { name }),
            (name_strategy(), "[A-Za-z0-9-]{1,40}")
                .prop_map(|(name, id)| V2Route::Upload { name, id }),
            (name_strategy(), reference)
                .prop_map(|(name, digest)| V2Route::Referrers { name, digest }),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(path in any::<String>()) {
            let _ = parse_v2_path(&path);
        }

        #[test]
        fn never_panics_on_route_like_paths(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("manifests"), Just("blobs"), Just("uploads"), Just("tags"),
                    Just("list"), Just("referrers"), Just(""), Just("a"), Just("_catalog"), Just("%"),
                ],
                0..8,
            )
        ) {
            let path = parts.join("/");
            if let Ok(route) = parse_v2_path(&path) {
                // Whatever routes must render back to a path that routes the same way.
                prop_assert_eq!(parse_v2_path(&route.to_path()), Ok(route));
            }
        }

        #[test]
        fn round_trips(route in route_strategy()) {
            let path = route.to_path();
            prop_assert_eq!(parse_v2_path(&path), Ok(route.clone()), "{:?}", path);
            if let V2Route::UploadStart { name } = &route {
                let bare = format!("{name}/blobs/uploads");
                prop_assert_eq!(parse_v2_path(&bare), Ok(route.clone()));
            }
        }
    }
}
