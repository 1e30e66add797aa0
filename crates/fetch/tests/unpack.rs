//! Layer unpacking: whiteouts and opaque directories as the OCI image spec defines them,
//! metadata, compression, and hostile archives (property tests: nothing may be created
//! or changed outside the root, whatever the entries say).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_fetch::unpack::{UnpackError, UnpackOptions, Unpacker};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum E {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    Hardlink(String, String),
}

fn path_of(e: &E) -> &str {
    match e {
        E::Dir(p, _) | E::File(p, _, _) | E::Symlink(p, _) | E::Hardlink(p, _) => p,
    }
}

/// A tar of `entries`, names written raw (no validation: `..` and `/` allowed), ustar.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let name = path_of(e).as_bytes();
        assert!(name.len() < 100, "test names must fit ustar");
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let data: &[u8] = match e {
            E::Dir(_, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                &[]
            }
            E::File(_, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                data
            }
            E::Symlink(_, target) | E::Hardlink(_, target) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                let t = target.as_bytes();
                assert!(t.len() < 100);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                &[]
            }
        };
        h.set_cksum();
        out.append(&h, data).unwrap();
    }
    out.into_inner().unwrap()
}

fn dir(p: &str) -> E {
    E::Dir(p.into(), 0o755)
}
fn file(p: &str, data: &str) -> E {
    E::File(p.into(), data.as_bytes().to_vec(), 0o644)
}
fn symlink(p: &str, t: &str) -> E {
    E::Symlink(p.into(), t.into())
}
fn hardlink(p: &str, t: &str) -> E {
    E::Hardlink(p.into(), t.into())
}

fn apply(root: &Path, layers: &[Vec<E>]) -> Result<(), UnpackError> {
    let mut u = Unpacker::new(root, UnpackOptions::default())?;
    for layer in layers {
        u.apply_tar(&tar_of(layer)[..])?;
    }
    Ok(())
}

/// Every path under `root` (relative, sorted) with a short description.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let desc = if md.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                walk(root, &p, out);
                format!("dir {:o}", md.mode() & 0o7777)
            } else {
                format!(
                    "file {:o} {}",
                    md.mode() & 0o7777,
                    String::from_utf8_lossy(&fs::read(&p).unwrap())
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

fn keys(t: &BTreeMap<String, String>) -> Vec<&str> {
    t.keys().map(String::as_str).collect()
}

#[test]
fn files_dirs_links_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[vec![
            E::Dir("etc/".into(), 0o750),
            E::File("etc/secret".into(), b"s".to_vec(), 0o4711),
            file("etc/a", "A"),
            symlink("etc/l", "a"),
            hardlink("etc/h", "etc/a"),
            // read-only dir filled after its entry: modes applied at the end of the layer
            E::Dir("ro/".into(), 0o555),
            file("ro/inside", "x"),
            // implicit parents
            file("deep/er/f", "f"),
        ]],
    )
    .unwrap();
    let t = tree(root);
    assert_eq!(t["etc"], "dir 750");
    assert_eq!(t["etc/secret"], "file 4711 s");
    assert_eq!(t["etc/a"], "file 644 A");
    assert_eq!(t["etc/l"], "-> a");
    assert_eq!(t["ro"], "dir 555");
    assert_eq!(t["ro/inside"], "file 644 x");
    assert_eq!(t["deep/er/f"], "file 644 f");
    let a = fs::metadata(root.join("etc/a")).unwrap();
    let h = fs::metadata(root.join("etc/h")).unwrap();
    assert_eq!(a.ino(), h.ino(), "hard link shares the inode");
    assert_eq!(a.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(root.join("etc")).unwrap().mtime(),
        1_600_000_000
    );
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn whiteout_removes_lower_file_and_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            vec![
                dir("a/"),
                file("a/x", "x"),
                file("a/y", "y"),
                dir("a/sub/"),
                file("a/sub/deep", "d"),
            ],
            vec![
                file("a/.wh.x", ""),
                file("a/.wh.sub", ""),
                file("a/.wh.nothing", ""),
            ],
        ],
    )
    .unwrap();
    let t = tree(root);
    assert_eq!(keys(&t), vec!["a", "a/y"]);
}

#[test]
fn whiteout_does_not_remove_same_layer_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            vec![file("x", "lower")],
            vec![file("x", "upper"), file(".wh.x", "")],
        ],
    )
    .unwrap();
    assert_eq!(tree(root)["x"], "file 644 upper");
}

#[test]
fn opaque_marker_before_siblings() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            vec![
                dir("d/"),
                file("d/old", "o"),
                dir("d/s/"),
                file("d/s/old2", "o"),
                file("keep", "k"),
            ],
            vec![dir("d/"), file("d/.wh..wh..opq", ""), file("d/new", "n")],
        ],
    )
    .unwrap();
    assert_eq!(keys(&tree(root)), vec!["d", "d/new", "keep"]);
}

#[test]
fn opaque_marker_after_siblings_keeps_this_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            vec![
                dir("d/"),
                file("d/old", "o"),
                dir("d/s/"),
                file("d/s/old2", "o"),
                file("d/s/x", "lower"),
            ],
            // d/s is re-declared and d/s/x rewritten by this layer: d/s stays, but its
            // lower-layer child old2 is hidden too.
            vec![
                dir("d/"),
                dir("d/s/"),
                file("d/s/x", "upper"),
                file("d/new", "n"),
                file("d/.wh..wh..opq", ""),
            ],
        ],
    )
    .unwrap();
    let t = tree(root);
    assert_eq!(keys(&t), vec!["d", "d/new", "d/s", "d/s/x"]);
    assert_eq!(t["d/s/x"], "file 644 upper");
}

#[test]
fn replacing_types() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            vec![
                dir("a/"),
                file("a/f", "f"),
                file("b", "b"),
                symlink("c", "b"),
            ],
            // dir -> file, file -> dir, symlink -> file (not written through)
            vec![file("a", "now a file"), dir("b/"), file("c", "c")],
        ],
    )
    .unwrap();
    let t = tree(root);
    assert_eq!(t["a"], "file 644 now a file");
    assert_eq!(t["b"], "dir 755");
    assert_eq!(t["c"], "file 644 c");
}

#[test]
fn symlinked_parents_resolve_inside_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let abs_outside = outside.to_str().unwrap().to_string();
    apply(
        &root,
        &[
            vec![dir("usr/"), dir("usr/lib/"), symlink("lib", "usr/lib")],
            vec![
                file("lib/libc.so", "c"),
                symlink("abs", "/"),
                file("abs/etc-escaped", "1"),
                symlink("up", "../../../../.."),
                file("up/up-escaped", "2"),
                symlink("out", &abs_outside),
                file("out/abs-escaped", "3"),
                symlink("chain", "lib/../../.."),
                file("chain/chain-escaped", "4"),
            ],
        ],
    )
    .unwrap();
    let t = tree(&root);
    assert_eq!(t["usr/lib/libc.so"], "file 644 c");
    assert_eq!(t["etc-escaped"], "file 644 1");
    assert_eq!(t["up-escaped"], "file 644 2");
    assert_eq!(t["chain-escaped"], "file 644 4");
    let inner = abs_outside.trim_start_matches('/').to_string() + "/abs-escaped";
    assert_eq!(t[&inner], "file 644 3");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn dotdot_and_absolute_names_are_clamped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    apply(
        &root,
        &[vec![
            file("../../x", "1"),
            file("/abs", "2"),
            file("a/../../../b", "3"),
        ]],
    )
    .unwrap();
    assert_eq!(keys(&tree(&root)), vec!["abs", "b", "x"]);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn hardlink_outside_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, "s").unwrap();
    let err = apply(&root, &[vec![hardlink("h", "../secret")]]).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let abs = secret.to_str().unwrap().to_string();
    assert!(apply(&root, &[vec![hardlink("h", &abs)]]).is_err());
    // Through a symlinked parent: the link's parent resolves inside the root.
    assert!(
        apply(
            &root,
            &[vec![
                symlink("s", tmp.path().to_str().unwrap()),
                hardlink("h", "s/secret")
            ]]
        )
        .is_err()
    );
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn gzip_zstd_and_diff_id() {
    use sha2::Digest;
    let tar = tar_of(&[file("f", "hello")]);
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for blob in [&tar, &gz, &zst] {
        let tmp = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(tmp.path(), UnpackOptions::default()).unwrap();
        let stats = u.apply_blob(&blob[..], Some(&diff_id)).unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"hello");
        let tmp = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(tmp.path(), UnpackOptions::default()).unwrap();
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = u.apply_blob(&blob[..], Some(&wrong)).unwrap_err();
        assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    }
}

// ------------------------------------------------------------------------------------
// Hostile archives
// ------------------------------------------------------------------------------------

/// A path made of hostile-ish components.
fn arb_path() -> impl Strategy<Value = String> {
    let comp = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("l".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh.l".to_string()),
        Just(".wh..wh..opq".to_string()),
    ];
    (any::<bool>(), prop::collection::vec(comp, 1..5)).prop_map(|(abs, comps)| {
        let p = comps.join("/");
        if abs { format!("/{p}") } else { p }
    })
}

fn arb_target(outside: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_string()),
        Just("..".to_string()),
        Just("../..".to_string()),
        Just("../../outside".to_string()),
        Just(outside.clone()),
        Just(format!("{outside}/canary")),
        Just("a".to_string()),
        Just("l".to_string()),
        Just("a/../../..".to_string()),
        arb_path(),
    ]
}

fn arb_entry(outside: String) -> impl Strategy<Value = E> {
    prop_oneof![
        arb_path().prop_map(|p| E::Dir(p, 0o755)),
        arb_path().prop_map(|p| E::File(p, b"pwned".to_vec(), 0o644)),
        (arb_path(), arb_target(outside.clone())).prop_map(|(p, t)| E::Symlink(p, t)),
        (arb_path(), arb_target(outside)).prop_map(|(p, t)| E::Hardlink(p, t)),
    ]
}

/// Snapshot of everything in `dir` (paths, types, sizes, contents, link counts).
fn snapshot(dir: &Path) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for e in walk_all(dir) {
        let md = fs::symlink_metadata(&e).unwrap();
        let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let what = if md.file_type().is_symlink() {
            format!("link {}", fs::read_link(&e).unwrap().display())
        } else if md.is_dir() {
            "dir".to_string()
        } else {
            format!("file {}", String::from_utf8_lossy(&fs::read(&e).unwrap()))
        };
        out.insert(rel, (what, md.nlink()));
    }
    out
}

fn walk_all(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk_all(&p));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn hostile_archives_never_escape(
        layers in (0u8..1).prop_flat_map(|_| {
            // The outside path is fixed per run by the strategy below.
            prop::collection::vec(
                prop::collection::vec(arb_entry(OUTSIDE_MARK.to_string()), 1..12), 1..4)
        })
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("canary"), "canary").unwrap();
        let outside_str = outside.to_str().unwrap().to_string();
        let layers: Vec<Vec<E>> = layers.into_iter().map(|l| l.into_iter().map(|e| subst(e, &outside_str)).collect()).collect();
        let before = snapshot(&outside);
        let mut u = Unpacker::new(&root, UnpackOptions::default()).unwrap();
        for layer in &layers {
            // Errors are fine (e.g. a hard link to nothing); escaping is not.
            if u.apply_tar(&tar_of(layer)[..]).is_err() { break; }
        }
        prop_assert_eq!(snapshot(&outside), before, "outside changed; layers: {:?}", layers);
        let mut names: Vec<String> = fs::read_dir(base).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        prop_assert_eq!(names, vec!["outside".to_string(), "root".to_string()]);
        // Nothing inside the root is a hard link to something outside.
        for p in walk_all(&root) {
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_file() {
                prop_assert_eq!(fs::read(&p).unwrap(), b"pwned".to_vec());
            }
        }
        // Restore permissions so the temp dir can be removed if not root.
        for p in walk_all(&root) {
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
            }
        }
    }
}

const OUTSIDE_MARK: &str = "@OUTSIDE@";

fn subst(e: E, outside: &str) -> E {
    let s = |t: String| t.replace(OUTSIDE_MARK, outside);
    match e {
        E::Symlink(p, t) => E::Symlink(p, s(t)),
        E::Hardlink(p, t) => E::Hardlink(p, s(t)),
        other => other,
    }
}
