//! Formatting for pages, and what the console reads out of manifests and image configs.

use serde_json::Value;

/// `1.5 MiB`, `312 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Rows per page of the console's lists (projects, users, members, robot accounts).
pub(crate) const LIST_PAGE: usize = 100;

/// Where a page of a list stands: its neighbours, if any, and the link to a page
/// without its number (`/projects?page=`).
pub(crate) struct Pager {
    pub(crate) prev: Option<usize>,
    pub(crate) next: Option<usize>,
    pub(crate) href: String,
}

impl Pager {
    /// Page `page` (from 1) of a list, knowing whether rows follow it.
    pub(crate) fn new(page: usize, more: bool, href: impl Into<String>) -> Pager {
        Pager {
            prev: (page > 1).then(|| page - 1),
            next: more.then_some(page + 1),
            href: href.into(),
        }
    }
}

/// The page number of a `?page=` value: 1 when empty; an error names a bad one.
pub(crate) fn page_number(field: &str, value: &str) -> Result<usize, super::PageError> {
    match value.trim() {
        "" => Ok(1),
        v => v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            super::PageError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("{field}={v:?} is not a page number; pages count from 1"),
            )
        }),
    }
}

/// Page `page` (from 1) of `items`, [`LIST_PAGE`] rows, for lists the console receives
/// whole from an [`crate::admin`] call (the registry's own authorization).
pub(crate) fn page_of<T>(items: Vec<T>, page: usize, href: impl Into<String>) -> (Vec<T>, Pager) {
    let start = (page - 1).saturating_mul(LIST_PAGE);
    let more = items.len() > start.saturating_add(LIST_PAGE);
    let rows = items.into_iter().skip(start).take(LIST_PAGE).collect();
    (rows, Pager::new(page, more, href))
}

/// RFC 3339 UTC, or "—" for none.
pub(crate) fn time(secs: Option<i64>) -> String {
    secs.map_or_else(|| "—".to_string(), crate::admin::format_time)
}

/// Platforms of an image index (`linux/amd64, linux/arm64/v8`), from its JSON.
pub(crate) fn index_platforms(content: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(content) else {
        return Vec::new();
    };
    let Some(manifests) = v.get("manifests").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out: Vec<String> = manifests
        .iter()
        .filter_map(|m| m.get("platform"))
        .filter_map(platform_of)
        .collect();
    out.dedup();
    out
}

fn platform_of(p: &Value) -> Option<String> {
    let os = p.get("os")?.as_str()?;
    let arch = p.get("architecture")?.as_str()?;
    Some(match p.get("variant").and_then(Value::as_str) {
        Some(variant) if !variant.is_empty() => format!("{os}/{arch}/{variant}"),
        _ => format!("{os}/{arch}"),
    })
}

/// The config descriptor (digest, size) of an image manifest.
pub(crate) fn config_of(content: &[u8]) -> Option<(berth_proto::Digest, u64)> {
    let v = serde_json::from_slice::<Value>(content).ok()?;
    let config = v.get("config")?;
    let digest = config.get("digest")?.as_str()?.parse().ok()?;
    let size = config.get("size")?.as_u64()?;
    Some((digest, size))
}

/// The manifest's `annotations`, sorted by key.
pub(crate) fn annotations(content: &[u8]) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_slice::<Value>(content) else {
        return Vec::new();
    };
    string_map(v.get("annotations"))
}

fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    let Some(map) = v.and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    out.sort();
    out
}

/// What the console shows of an image configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigSummary {
    pub platform: Option<String>,
    pub created: Option<String>,
    pub entrypoint: Option<String>,
    pub cmd: Option<String>,
    pub labels: Vec<(String, String)>,
}

/// Read an image config's JSON (`created`, `os`/`architecture`, `config.Entrypoint`,
/// `config.Cmd`, `config.Labels`); None when it is not JSON.
pub(crate) fn config_summary(bytes: &[u8]) -> Option<ConfigSummary> {
    let v = serde_json::from_slice::<Value>(bytes).ok()?;
    let inner = v.get("config");
    let argv = |key: &str| {
        inner
            .and_then(|c| c.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                let words: Vec<String> = a
                    .iter()
                    .map(|w| match w {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                serde_json::to_string(&words).unwrap_or_default()
            })
    };
    Some(ConfigSummary {
        platform: platform_of(&v),
        created: v.get("created").and_then(Value::as_str).map(str::to_string),
        entrypoint: argv("Entrypoint"),
        cmd: argv("Cmd"),
        labels: string_map(inner.and_then(|c| c.get("Labels"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 << 20), "300 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn pages_of_a_whole_list() {
        let items: Vec<usize> = (0..250).collect();
        let (rows, pager) = page_of(items.clone(), 1, "/x?page=");
        assert_eq!(rows, (0..100).collect::<Vec<_>>());
        assert_eq!((pager.prev, pager.next), (None, Some(2)));
        let (rows, pager) = page_of(items.clone(), 3, "/x?page=");
        assert_eq!(rows, (200..250).collect::<Vec<_>>());
        assert_eq!((pager.prev, pager.next), (Some(2), None));
        assert_eq!(pager.href, "/x?page=");
        let (rows, pager) = page_of(items, 4, "/x?page=");
        assert!(rows.is_empty());
        assert_eq!((pager.prev, pager.next), (Some(3), None));
        let (rows, pager) = page_of((0..100).collect::<Vec<usize>>(), 1, "");
        assert_eq!(rows.len(), 100);
        assert_eq!(pager.next, None, "exactly one full page has no next");
        assert_eq!(page_number("page", "").ok(), Some(1));
        assert_eq!(page_number("page", " 7 ").ok(), Some(7));
        assert!(page_number("page", "0").is_err());
        assert!(page_number("page", "x").is_err());
    }

    #[test]
    fn platforms_of_an_index() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"digest":"sha256:a","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:b","platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"digest":"sha256:c"}]}"#;
        assert_eq!(index_platforms(index), ["linux/amd64", "linux/arm64/v8"]);
        assert!(index_platforms(b"not json").is_empty());
    }

    #[test]
    fn config_fields() {
        let config = br#"{"os":"linux","architecture":"amd64","created":"2026-01-02T03:04:05Z",
            "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
            "Labels":{"b":"2","a":"<script>alert(1)</script>"}}}"#;
        let s = config_summary(config).unwrap();
        assert_eq!(s.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(s.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(s.entrypoint.as_deref(), Some(r#"["/bin/sh","-c"]"#));
        assert_eq!(s.cmd.as_deref(), Some(r#"["echo hi"]"#));
        assert_eq!(s.labels[0].0, "a");
        assert_eq!(config_summary(b"\x00\x01"), None);
        let manifest = br#"{"config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":7},
            "annotations":{"org.opencontainers.image.title":"x"}}"#;
        assert_eq!(config_of(manifest).unwrap().1, 7);
        assert_eq!(annotations(manifest).len(), 1);
    }
}
