//! `Range` (blob GET) and `Content-Range` (chunked upload PATCH) headers.
//!
//! Both parsers work on untrusted header text: numbers are parsed digit by digit with
//! overflow handling, never with arithmetic that can panic.

/// Why a range header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Well-formed but outside the content (answer 416 with `Content-Range: bytes */<size>`).
    #[error(
        "the requested range is not satisfiable: request a start offset below the blob size \
         with start <= end"
    )]
    Unsatisfiable,
    /// Not a range this server understands; the payload says what was wrong.
    #[error("malformed range {0}")]
    Malformed(String),
}

/// Parse a run of ASCII digits, saturating at `u64::MAX`. `None` if empty or not all digits.
fn digits_saturating(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Parse a run of ASCII digits; `None` if empty, not all digits, or larger than `u64::MAX`.
fn digits_exact(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Strip a case-insensitive `bytes` unit followed by `sep`.
fn strip_bytes_unit(s: &str, sep: char) -> Option<&str> {
    let head = s.get(..5)?;
    if !head.eq_ignore_ascii_case("bytes") {
        return None;
    }
    s[5..].trim_start().strip_prefix(sep)
}

/// Parse a blob GET `Range` header against a blob of `total` bytes.
///
/// Accepts a single `bytes=a-b`, `bytes=a-` or `bytes=-n` (last `n` bytes) and returns the
/// inclusive `(start, end)` with `end` clamped to `total - 1`. Numbers too large for `u64`
/// saturate (so a huge end means "to the end", a huge start is unsatisfiable).
pub fn parse_range(header: &str, total: u64) -> Result<(u64, u64), RangeError> {
    let header = header.trim();
    let spec = strip_bytes_unit(header, '=').ok_or_else(|| {
        RangeError::Malformed(format!(
            "{header:?}: expected `bytes=<start>-<end>`, `bytes=<start>-` or `bytes=-<suffix>`"
        ))
    })?;
    let spec = spec.trim();
    if spec.contains(',') {
        return Err(RangeError::Malformed(format!(
            "{header:?}: multiple ranges are not supported; request a single range"
        )));
    }
    let bad = || {
        RangeError::Malformed(format!(
            "{header:?}: expected `bytes=<start>-<end>`, `bytes=<start>-` or `bytes=-<suffix>` \
             with decimal offsets"
        ))
    };
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last `n` bytes.
        let n = digits_saturating(b).ok_or_else(bad)?;
        if n == 0 || total == 0 {
            return Err(RangeError::Unsatisfiable);
        }
        return Ok((total.saturating_sub(n), total - 1));
    }
    let start = digits_saturating(a).ok_or_else(bad)?;
    let end = if b.is_empty() {
        u64::MAX
    } else {
        digits_saturating(b).ok_or_else(bad)?
    };
    if start > end || total == 0 || start >= total {
        return Err(RangeError::Unsatisfiable);
    }
    Ok((start, end.min(total - 1)))
}

/// Parse an upload PATCH `Content-Range` header into an inclusive `(start, end)`.
///
/// Accepts the Docker form `a-b` as well as `bytes a-b/*`, `bytes a-b/<length>` and
/// `bytes=a-b`. Requires `a <= b` (and `b < length` when a length is given). The caller checks
/// that `start` equals the current upload offset and that `end - start + 1` equals the body.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), RangeError> {
    let header = header.trim();
    let malformed = |why: &str| {
        RangeError::Malformed(format!(
            "Content-Range {header:?}: {why}; send `<start>-<end>` (inclusive byte offsets, \
             e.g. `0-1023`) or `bytes <start>-<end>/*`"
        ))
    };
    let spec = strip_bytes_unit(header, '=')
        .or_else(|| {
            // `bytes a-b/...`: unit, at least one space, then the range.
            let head = header.get(..5)?;
            let rest = &header[5..];
            (head.eq_ignore_ascii_case("bytes") && rest.starts_with(char::is_whitespace))
                .then_some(rest)
        })
        .unwrap_or(header)
        .trim();
    let (range, length) = match spec.split_once('/') {
        Some((range, length)) => (range.trim(), Some(length.trim())),
        None => (spec, None),
    };
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| malformed("expected `<start>-<end>`"))?;
    let start = digits_exact(a.trim()).ok_or_else(|| {
        malformed("the start offset is not a decimal number that fits in 64 bits")
    })?;
    let end = digits_exact(b.trim())
        .ok_or_else(|| malformed("the end offset is not a decimal number that fits in 64 bits"))?;
    if start > end {
        return Err(malformed("the start offset is after the end offset"));
    }
    match length {
        None | Some("*") => {}
        Some(len) => {
            let len = digits_exact(len)
                .ok_or_else(|| malformed("the total length must be `*` or a decimal number"))?;
            if end >= len {
                return Err(malformed("the end offset is not below the total length"));
            }
        }
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok((0, 9)));
        assert_eq!(parse_range("bytes=10-", 100), Ok((10, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=-1000", 100), Ok((0, 99)));
        assert_eq!(parse_range("bytes=90-1000", 100), Ok((90, 99)));
        assert_eq!(parse_range(" Bytes = 1 - 2 ", 100), Ok((1, 2)));
        assert_eq!(parse_range("bytes=99-99", 100), Ok((99, 99)));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999999", 100),
            Ok((0, 99))
        );
        assert_eq!(parse_range("bytes=-99999999999999999999999", 5), Ok((0, 4)));
    }

    #[test]
    fn unsatisfiable() {
        for (h, total) in [
            ("bytes=100-", 100),
            ("bytes=100-200", 100),
            ("bytes=0-0", 0),
            ("bytes=-5", 0),
            ("bytes=-0", 100),
            ("bytes=5-4", 100),
            ("bytes=99999999999999999999999-", 100),
        ] {
            assert_eq!(
                parse_range(h, total),
                Err(RangeError::Unsatisfiable),
                "{h:?}"
            );
        }
    }

    #[test]
    fn malformed_ranges() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "0-1",
            "bytes=1--2",
            "bytes=ü-1",
            "bytesü",
        ] {
            let e = parse_range(h, 100).unwrap_err();
            assert!(matches!(e, RangeError::Malformed(_)), "{h:?}");
        }
        let m = parse_range("bytes=0-1,3-4", 100).unwrap_err().to_string();
        assert!(m.contains("single range"), "{m}");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-1023"), Ok((0, 1023)));
        assert_eq!(parse_content_range("bytes 0-1023/*"), Ok((0, 1023)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Ok((5, 9)));
        assert_eq!(parse_content_range("bytes=5-9"), Ok((5, 9)));
        assert_eq!(parse_content_range(" 7-7 "), Ok((7, 7)));
        assert_eq!(
            parse_content_range("18446744073709551614-18446744073709551615"),
            Ok((u64::MAX - 1, u64::MAX))
        );
        for bad in [
            "",
            "5",
            "-5",
            "5-",
            "9-5",
            "a-b",
            "bytes 0-10/10",
            "bytes 0-1/x",
            "bytes */10",
            "0-18446744073709551616",
            "99999999999999999999999999-1",
            "bytes0-1",
            "0-1,2-3",
        ] {
            let e = parse_content_range(bad).unwrap_err();
            assert!(matches!(e, RangeError::Malformed(_)), "{bad:?}");
        }
        let m = parse_content_range("9-5").unwrap_err().to_string();
        assert!(m.contains("\"9-5\"") && m.contains("after"), "{m}");
    }

    proptest! {
        #[test]
        fn range_never_panics(h in any::<String>(), total in any::<u64>()) {
            let _ = parse_range(&h, total);
            let _ = parse_content_range(&h);
        }

        #[test]
        fn range_within_bounds(
            a in proptest::option::of(any::<u64>()),
            b in proptest::option::of(any::<u64>()),
            total in prop_oneof![0u64..1000, any::<u64>()],
        ) {
            let h = format!(
                "bytes={}-{}",
                a.map(|v| v.to_string()).unwrap_or_default(),
                b.map(|v| v.to_string()).unwrap_or_default()
            );
            match parse_range(&h, total) {
                Ok((s, e)) => {
                    prop_assert!(s <= e && e < total, "{h} total={total} -> {s}-{e}");
                    if let Some(a) = a { prop_assert_eq!(s, a); }
                    if let (None, Some(n)) = (a, b) { prop_assert_eq!(e - s + 1, n.min(total)); }
                }
                Err(RangeError::Unsatisfiable) => {}
                Err(RangeError::Malformed(m)) => prop_assert!(a.is_none() && b.is_none(), "{m}"),
            }
        }

        #[test]
        fn content_range_round_trips(a in any::<u64>(), b in any::<u64>(), form in 0..4u8) {
            let h = match form {
                0 => format!("{a}-{b}"),
                1 => format!("bytes {a}-{b}/*"),
                2 => format!("bytes={a}-{b}"),
                _ => format!("bytes {a}-{b}/{}", b.saturating_add(1)),
            };
            let r = parse_content_range(&h);
            if a <= b && !(form == 3 && b == u64::MAX) {
                prop_assert_eq!(r, Ok((a, b)));
            } else {
                prop_assert!(matches!(r, Err(RangeError::Malformed(_))));
            }
        }
    }
}
