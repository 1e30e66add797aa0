//! Shared proptest strategies for the unit tests.

use proptest::prelude::*;

/// One grammar-valid path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub(crate) fn component_strategy() -> impl Strategy<Value = String> {
    let run = "[a-z0-9]{1,5}";
    let sep = prop_oneof![
        Just(".".to_string()),
        Just("_".to_string()),
        Just("__".to_string()),
        "-{1,3}"
    ];
    (run, proptest::collection::vec((sep, run), 0..3)).prop_map(|(first, rest)| {
        let mut s = first;
        for (sep, run) in rest {
            s.push_str(&sep);
            s.push_str(&run);
        }
        s
    })
}

/// Grammar-valid repository names (always well under `MAX_NAME_LEN`). Components named like
/// route markers are mixed in to exercise the router.
pub(crate) fn name_strategy() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        6 => component_strategy(),
        1 => Just("manifests".to_string()),
        1 => Just("blobs".to_string()),
        1 => Just("uploads".to_string()),
        1 => Just("tags".to_string()),
        1 => Just("list".to_string()),
        1 => Just("referrers".to_string()),
    ];
    proptest::collection::vec(component, 1..5).prop_map(|c| c.join("/"))
}

/// A digest string from arbitrary content.
pub(crate) fn digest_strategy() -> impl Strategy<Value = crate::Digest> {
    (any::<Vec<u8>>(), any::<bool>()).prop_map(|(data, sha512)| {
        let alg = if sha512 {
            crate::Algorithm::Sha512
        } else {
            crate::Algorithm::Sha256
        };
        crate::Digest::of(alg, &data)
    })
}
