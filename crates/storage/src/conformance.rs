//! The conformance suite every storage backend runs.
//!
//! A backend's tests call [`blob_store_suite`] and [`metadata_suite`] on a fresh, empty
//! store; the suites panic (with a message naming the failed expectation) on any deviation
//! from the contracts documented on [`BlobStore`] and [`MetadataStore`].

use std::fmt::Debug;

use berth_proto::{Algorithm, Digest};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::blob::{BlobStore, ByteStream};
use crate::metadata::{ManifestRecord, MetadataStore, NewManifest, Referrer, UploadSession};
use crate::{StorageError, StorageResult};

const NO_LIMIT: u64 = u64::MAX;

fn ok<T>(result: StorageResult<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

fn err<T: Debug>(result: StorageResult<T>, what: &str) -> StorageError {
    match result {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

fn stream(chunks: &[&[u8]]) -> ByteStream {
    let owned: Vec<Result<Bytes, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(owned))
}

/// Split `data` into pieces of `size` bytes (the last may be shorter).
fn pieces(data: &[u8], size: usize) -> Vec<&[u8]> {
    data.chunks(size).collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

async fn read_blob(store: &dyn BlobStore, digest: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut reader = ok(store.open(digest, range).await, "open blob");
    let mut out = Vec::new();
    if let Err(e) = reader.reader.read_to_end(&mut out).await {
        panic!("reading blob {digest}: {e}");
    }
    assert_eq!(
        out.len() as u64,
        reader.len,
        "reader yielded its declared len"
    );
    out
}

async fn upload(store: &dyn BlobStore, data: &[u8], digest: &Digest) -> StorageResult<u64> {
    let id = store.start_upload().await?;
    store
        .append(&id, Some(0), stream(&pieces(data, 64 * 1024)), NO_LIMIT)
        .await?;
    store.finish_upload(&id, digest).await
}

/// Run every blob-store expectation against `store` (which must be empty).
/// `leftovers` lists upload artifacts still stored by the backend (upload files, temporary
/// objects); it must be empty once every session has finished or been cancelled.
pub async fn blob_store_suite(store: &dyn BlobStore, leftovers: &(dyn Fn() -> Vec<String> + Sync)) {
    // Unknown blobs.
    let absent = Digest::sha256(b"never stored");
    assert_eq!(ok(store.stat(&absent).await, "stat absent"), None);
    assert!(matches!(
        store.open(&absent, None).await.map(|r| r.len),
        Err(StorageError::BlobUnknown(_))
    ));
    assert!(matches!(
        store.delete(&absent).await,
        Err(StorageError::BlobUnknown(_))
    ));

    // Monolithic upload (one append, no offset), larger than typical write buffers.
    let mono = pattern(2_500_000, 1);
    let mono_digest = Digest::sha256(&mono);
    let id = ok(store.start_upload().await, "start monolithic");
    assert_eq!(ok(store.upload_state(&id).await, "fresh state").size, 0);
    let state = ok(
        store
            .append(&id, None, stream(&pieces(&mono, 16 * 1024)), NO_LIMIT)
            .await,
        "monolithic append",
    );
    assert_eq!(state.size, mono.len() as u64);
    assert_eq!(state.id, id);
    assert_eq!(
        ok(
            store.finish_upload(&id, &mono_digest).await,
            "finish monolithic"
        ),
        mono.len() as u64
    );
    assert_eq!(
        ok(store.stat(&mono_digest).await, "stat monolithic"),
        Some(mono.len() as u64)
    );
    assert_eq!(read_blob(store, &mono_digest, None).await, mono);
    assert!(matches!(
        store.upload_state(&id).await,
        Err(StorageError::UploadUnknown(_))
    ));

    // Chunked upload with offsets, chunk sizes crossing buffer boundaries.
    let chunked = pattern(3_000_001, 2);
    let chunked_digest = Digest::sha256(&chunked);
    let id = ok(store.start_upload().await, "start chunked");
    let mut offset = 0usize;
    for len in [1usize, 1_048_575, 1_048_577, 7, 0, 902_841] {
        let part = &chunked[offset..offset + len];
        let state = ok(
            store
                .append(
                    &id,
                    Some(offset as u64),
                    stream(&pieces(part, 10_000)),
                    NO_LIMIT,
                )
                .await,
            "chunked append",
        );
        offset += len;
        assert_eq!(state.size, offset as u64, "size after chunk");
        assert_eq!(
            ok(store.upload_state(&id).await, "state").size,
            offset as u64
        );
    }
    assert_eq!(offset, chunked.len());

    // Out-of-order chunks are rejected and change nothing.
    let e = err(
        store.append(&id, Some(5), stream(&[b"xx"]), NO_LIMIT).await,
        "out-of-order append",
    );
    assert!(
        matches!(e, StorageError::OutOfOrder { expected, given: 5 } if expected == chunked.len() as u64),
        "{e:?}"
    );
    assert_eq!(
        ok(store.upload_state(&id).await, "state").size,
        chunked.len() as u64
    );
    assert_eq!(
        ok(
            store.finish_upload(&id, &chunked_digest).await,
            "finish chunked"
        ),
        chunked.len() as u64
    );
    assert_eq!(read_blob(store, &chunked_digest, None).await, chunked);

    // Range reads.
    let total = chunked.len() as u64;
    for (start, end) in [
        (0, 0),
        (10, 19),
        (total - 1, total - 1),
        (0, total - 1),
        (1_048_570, 2_100_000),
    ] {
        let mut reader = ok(
            store.open(&chunked_digest, Some((start, end))).await,
            "range",
        );
        assert_eq!(reader.len, end - start + 1);
        assert_eq!(reader.total, total);
        let mut out = Vec::new();
        if let Err(e) = reader.reader.read_to_end(&mut out).await {
            panic!("range read: {e}");
        }
        assert_eq!(
            out,
            &chunked[start as usize..=end as usize],
            "range {start}-{end}"
        );
    }
    for (start, end) in [(total, total), (5, 4), (0, total)] {
        let e = err(
            store
                .open(&chunked_digest, Some((start, end)))
                .await
                .map(|r| r.len),
            "range outside blob",
        );
        assert!(matches!(e, StorageError::SizeInvalid(_)), "{e:?}");
    }
    let whole = ok(store.open(&chunked_digest, None).await, "open whole");
    assert_eq!((whole.len, whole.total), (total, total));
    drop(whole);

    // Size limit, within one append and across appends.
    let id = ok(store.start_upload().await, "start limited");
    let e = err(
        store.append(&id, None, stream(&[&[7u8; 100]]), 50).await,
        "append over limit",
    );
    assert!(matches!(e, StorageError::SizeInvalid(_)), "{e:?}");
    assert!(ok(store.upload_state(&id).await, "state").size <= 50);
    ok(store.cancel_upload(&id).await, "cancel limited");
    let id = ok(store.start_upload().await, "start limited 2");
    ok(
        store.append(&id, Some(0), stream(&[&[1u8; 40]]), 50).await,
        "append under limit",
    );
    let e = err(
        store
            .append(&id, Some(40), stream(&[&[2u8; 5], &[3u8; 15]]), 50)
            .await,
        "second append over limit",
    );
    assert!(matches!(e, StorageError::SizeInvalid(_)), "{e:?}");
    let size = ok(store.upload_state(&id).await, "state").size;
    assert!((40..=50).contains(&size), "size {size} after limit");
    ok(store.cancel_upload(&id).await, "cancel limited 2");

    // Digest mismatch: nothing is stored and the session is gone.
    let bytes = pattern(70_000, 3);
    let actual = Digest::sha256(&bytes);
    let claimed = Digest::sha256(b"something else");
    let id = ok(store.start_upload().await, "start mismatch");
    ok(
        store.append(&id, None, stream(&[&bytes]), NO_LIMIT).await,
        "append mismatch",
    );
    let e = err(store.finish_upload(&id, &claimed).await, "finish mismatch");
    match e {
        StorageError::DigestMismatch {
            expected,
            actual: got,
        } => {
            assert_eq!(expected, claimed);
            assert_eq!(got, actual);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(ok(store.stat(&claimed).await, "stat claimed"), None);
    assert_eq!(ok(store.stat(&actual).await, "stat actual"), None);
    assert!(matches!(
        store.upload_state(&id).await,
        Err(StorageError::UploadUnknown(_))
    ));

    // Duplicate upload of a stored digest: verified, and the original is kept.
    assert_eq!(
        ok(upload(store, &mono, &mono_digest).await, "duplicate upload"),
        mono.len() as u64
    );
    assert_eq!(read_blob(store, &mono_digest, None).await, mono);
    let e = err(
        upload(store, &bytes, &mono_digest).await,
        "other bytes claiming a stored digest",
    );
    assert!(matches!(e, StorageError::DigestMismatch { .. }), "{e:?}");
    assert_eq!(read_blob(store, &mono_digest, None).await, mono);

    // Empty blob.
    let empty = Digest::sha256(b"");
    let id = ok(store.start_upload().await, "start empty");
    assert_eq!(
        ok(store.finish_upload(&id, &empty).await, "finish empty"),
        0
    );
    assert_eq!(ok(store.stat(&empty).await, "stat empty"), Some(0));
    assert!(read_blob(store, &empty, None).await.is_empty());

    // sha512 digests.
    let long = pattern(1_300_000, 4);
    let long512 = Digest::of(Algorithm::Sha512, &long);
    assert_eq!(
        ok(upload(store, &long, &long512).await, "sha512 upload"),
        long.len() as u64
    );
    assert_eq!(
        ok(store.stat(&long512).await, "stat sha512"),
        Some(long.len() as u64)
    );
    assert_eq!(read_blob(store, &long512, Some((3, 9))).await, &long[3..=9]);
    let wrong512 = Digest::of(Algorithm::Sha512, b"nope");
    let e = err(upload(store, &long, &wrong512).await, "sha512 mismatch");
    match e {
        StorageError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, wrong512);
            assert_eq!(actual, long512);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(ok(store.stat(&wrong512).await, "stat wrong sha512"), None);

    // A body that fails mid-stream leaves a consistent, resumable session.
    let resumable = pattern(1_500_000, 5);
    let resumable_digest = Digest::sha256(&resumable);
    let id = ok(store.start_upload().await, "start resumable");
    let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::copy_from_slice(&resumable[..1_100_000])),
        Ok(Bytes::copy_from_slice(&resumable[1_100_000..1_200_000])),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
        Ok(Bytes::from_static(b"never read")),
    ]));
    let e = err(
        store.append(&id, Some(0), failing, NO_LIMIT).await,
        "append with failing body",
    );
    assert!(matches!(e, StorageError::Body(_)), "{e:?}");
    let kept = ok(store.upload_state(&id).await, "state after body error").size as usize;
    assert!(kept <= 1_200_000, "kept {kept} bytes");
    ok(
        store
            .append(
                &id,
                Some(kept as u64),
                stream(&[&resumable[kept..]]),
                NO_LIMIT,
            )
            .await,
        "resume after body error",
    );
    assert_eq!(
        ok(
            store.finish_upload(&id, &resumable_digest).await,
            "finish resumed"
        ),
        resumable.len() as u64
    );
    assert_eq!(read_blob(store, &resumable_digest, None).await, resumable);

    // Concurrent appends to one session are serialized.
    let id = ok(store.start_upload().await, "start concurrent");
    let a = vec![b'a'; 300_000];
    let b = vec![b'b'; 200_000];
    let (ra, rb) = tokio::join!(
        store.append(&id, None, stream(&pieces(&a, 1000)), NO_LIMIT),
        store.append(&id, None, stream(&pieces(&b, 1000)), NO_LIMIT),
    );
    let (sa, sb) = (ok(ra, "concurrent a").size, ok(rb, "concurrent b").size);
    assert_eq!(sa.max(sb), 500_000);
    assert!(
        sa == 300_000 || sb == 200_000,
        "appends interleaved: {sa} {sb}"
    );
    let mut joined = if sa < sb { a.clone() } else { b.clone() };
    joined.extend_from_slice(if sa < sb { &b } else { &a });
    let joined_digest = Digest::sha256(&joined);
    ok(
        store.finish_upload(&id, &joined_digest).await,
        "finish concurrent",
    );
    assert_eq!(read_blob(store, &joined_digest, None).await, joined);

    // Cancel.
    let id = ok(store.start_upload().await, "start cancelled");
    ok(
        store
            .append(&id, None, stream(&[b"doomed"]), NO_LIMIT)
            .await,
        "append cancelled",
    );
    ok(store.cancel_upload(&id).await, "cancel");
    assert!(matches!(
        store.upload_state(&id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(matches!(
        store.cancel_upload(&id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(matches!(
        store.append(&id, None, stream(&[b"x"]), NO_LIMIT).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(matches!(
        store.finish_upload(&id, &Digest::sha256(b"doomed")).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert_eq!(
        ok(
            store.stat(&Digest::sha256(b"doomed")).await,
            "stat cancelled"
        ),
        None
    );

    // Unknown and malicious ids.
    let long_id = "a".repeat(65);
    for id in [
        "6f1d8e0c-0000-4000-8000-000000000000",
        "../../etc/passwd",
        "",
        "a/b",
        ".",
        "..",
        "id with spaces",
        long_id.as_str(),
    ] {
        let unknown = |e: &StorageError| matches!(e, StorageError::UploadUnknown(_));
        let e = err(store.upload_state(id).await, "state of unknown id");
        assert!(unknown(&e), "{id:?}: {e:?}");
        let e = err(
            store.append(id, None, stream(&[b"x"]), NO_LIMIT).await,
            "append to unknown id",
        );
        assert!(unknown(&e), "{id:?}: {e:?}");
        let e = err(store.finish_upload(id, &empty).await, "finish unknown id");
        assert!(unknown(&e), "{id:?}: {e:?}");
        let e = err(store.cancel_upload(id).await, "cancel unknown id");
        assert!(unknown(&e), "{id:?}: {e:?}");
    }

    // Delete.
    ok(store.delete(&chunked_digest).await, "delete");
    assert_eq!(ok(store.stat(&chunked_digest).await, "stat deleted"), None);
    assert!(matches!(
        store.open(&chunked_digest, None).await.map(|r| r.len),
        Err(StorageError::BlobUnknown(_))
    ));
    assert!(matches!(
        store.delete(&chunked_digest).await,
        Err(StorageError::BlobUnknown(_))
    ));
    assert_eq!(read_blob(store, &mono_digest, None).await, mono);
    // A deleted digest can be uploaded again.
    assert_eq!(
        ok(upload(store, &chunked, &chunked_digest).await, "re-upload"),
        chunked.len() as u64
    );

    let left = leftovers();
    assert!(left.is_empty(), "upload artifacts left behind: {left:?}");
}

fn manifest(
    repository: &str,
    content: &str,
    tag: Option<&str>,
    blobs: &[&Digest],
    subject: Option<&Digest>,
    artifact_type: Option<&str>,
) -> NewManifest {
    NewManifest {
        repository: repository.to_owned(),
        digest: Digest::sha256(content.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        content: content.as_bytes().to_vec(),
        tag: tag.map(str::to_owned),
        blobs: blobs.iter().map(|d| (*d).clone()).collect(),
        children: Vec::new(),
        subject: subject.cloned(),
        artifact_type: artifact_type.map(str::to_owned),
        annotations_json: None,
    }
}

fn record(m: &NewManifest) -> ManifestRecord {
    ManifestRecord {
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        content: m.content.clone(),
    }
}

/// Run every metadata expectation against `store` (which must be empty).
pub async fn metadata_suite(store: &dyn MetadataStore) {
    const REPO: &str = "library/alpine";
    const OTHER: &str = "team/app";

    // Empty store.
    assert!(ok(store.list_repositories(None, 100).await, "list empty").is_empty());
    assert!(!ok(store.repository_exists(REPO).await, "exists empty"));
    let e = err(
        store.list_tags(REPO, None, 10).await,
        "tags of missing repo",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    let d1 = Digest::sha256(b"layer one");
    let d2 = Digest::sha256(b"config");
    assert_eq!(
        ok(
            store.manifest_by_digest(REPO, &d1).await,
            "missing manifest"
        ),
        None
    );
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "latest").await, "missing tag"),
        None
    );
    assert!(!ok(
        store.manifest_exists(REPO, &d1).await,
        "missing exists"
    ));

    // Blob links.
    ok(store.link_blob(REPO, &d1, 1234).await, "link");
    ok(store.link_blob(REPO, &d1, 1234).await, "link again");
    ok(store.link_blob(REPO, &d2, 56).await, "link config");
    assert!(ok(store.repository_exists(REPO).await, "exists after link"));
    assert_eq!(
        ok(store.blob_link(REPO, &d1).await, "blob_link"),
        Some(1234)
    );
    assert_eq!(
        ok(store.blob_link(OTHER, &d1).await, "blob_link other"),
        None
    );
    assert!(ok(store.list_tags(REPO, None, 10).await, "tags of new repo").is_empty());

    // Manifests by tag and digest.
    let m1 = manifest(REPO, r#"{"v":1}"#, Some("3.20"), &[&d2, &d1], None, None);
    ok(store.put_manifest(m1.clone()).await, "put m1");
    ok(store.put_manifest(m1.clone()).await, "put m1 again");
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "3.20").await, "by tag"),
        Some(record(&m1))
    );
    assert_eq!(
        ok(
            store.manifest_by_digest(REPO, &m1.digest).await,
            "by digest"
        ),
        Some(record(&m1))
    );
    assert!(ok(
        store.manifest_exists(REPO, &m1.digest).await,
        "exists m1"
    ));
    assert!(!ok(
        store.manifest_exists(OTHER, &m1.digest).await,
        "exists m1 elsewhere"
    ));
    assert_eq!(
        ok(
            store.manifest_by_digest(OTHER, &m1.digest).await,
            "other repo"
        ),
        None
    );
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "3.21").await, "other tag"),
        None
    );

    // A manifest pushed to a new repository creates it and links its (known) blobs there.
    let m_other = manifest(OTHER, r#"{"v":"other"}"#, Some("v1"), &[&d1], None, None);
    ok(store.put_manifest(m_other.clone()).await, "put other");
    assert!(ok(store.repository_exists(OTHER).await, "exists other"));
    assert_eq!(
        ok(store.blob_link(OTHER, &d1).await, "linked by manifest"),
        Some(1234)
    );

    // Tag moves.
    let m2 = manifest(REPO, r#"{"v":2}"#, Some("3.20"), &[&d1], None, None);
    ok(store.put_manifest(m2.clone()).await, "put m2");
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "3.20").await, "moved tag"),
        Some(record(&m2))
    );
    assert_eq!(
        ok(
            store.manifest_by_digest(REPO, &m1.digest).await,
            "m1 untagged"
        ),
        Some(record(&m1))
    );
    // Re-putting by digest keeps the tag where it is.
    let mut m1_untagged = m1.clone();
    m1_untagged.tag = None;
    ok(store.put_manifest(m1_untagged).await, "put m1 by digest");
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "3.20").await, "tag unchanged"),
        Some(record(&m2))
    );

    // Tag pagination (lexical, byte order).
    for tag in ["latest", "3.19", "Z", "a-b", "a_b", "a.b"] {
        let mut m = m2.clone();
        m.tag = Some(tag.to_owned());
        ok(store.put_manifest(m).await, "put tag");
    }
    let all_tags = ["3.19", "3.20", "Z", "a-b", "a.b", "a_b", "latest"];
    assert_eq!(
        ok(store.list_tags(REPO, None, 100).await, "all tags"),
        all_tags
    );
    assert_eq!(
        ok(store.list_tags(REPO, None, 2).await, "first page"),
        &all_tags[..2]
    );
    assert_eq!(
        ok(store.list_tags(REPO, Some("3.20"), 3).await, "middle page"),
        &all_tags[2..5]
    );
    assert_eq!(
        ok(store.list_tags(REPO, Some("a_b"), 3).await, "last page"),
        &all_tags[6..]
    );
    assert_eq!(
        ok(
            store.list_tags(REPO, Some("a.a"), 1).await,
            "last not a tag"
        ),
        ["a.b"]
    );
    assert!(ok(store.list_tags(REPO, Some("latest"), 10).await, "past end").is_empty());
    assert!(ok(store.list_tags(REPO, None, 0).await, "limit 0").is_empty());

    // Repository pagination.
    for repo in ["b/c", "b-c", "B", "a"] {
        ok(store.link_blob(repo, &d2, 56).await, "link creates repo");
    }
    let all_repos = ["B", "a", "b-c", "b/c", REPO, OTHER];
    assert_eq!(
        ok(store.list_repositories(None, 100).await, "all repos"),
        all_repos
    );
    assert_eq!(
        ok(store.list_repositories(None, 3).await, "repo page 1"),
        &all_repos[..3]
    );
    assert_eq!(
        ok(store.list_repositories(Some("b-c"), 2).await, "repo page 2"),
        &all_repos[3..5]
    );
    assert_eq!(
        ok(store.list_repositories(Some(REPO), 2).await, "repo page 3"),
        &all_repos[5..]
    );
    assert!(ok(store.list_repositories(Some(OTHER), 2).await, "repo end").is_empty());

    // Tag deletes.
    ok(store.delete_tag(REPO, "Z").await, "delete tag");
    let e = err(store.delete_tag(REPO, "Z").await, "delete tag again");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    let e = err(store.delete_tag(REPO, "never").await, "delete missing tag");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "Z").await, "deleted tag"),
        None
    );
    assert!(ok(
        store.manifest_exists(REPO, &m2.digest).await,
        "manifest stays"
    ));

    // Manifest deletes take their tags along.
    ok(store.delete_manifest(REPO, &m2.digest).await, "delete m2");
    assert_eq!(
        ok(store.manifest_by_digest(REPO, &m2.digest).await, "m2 gone"),
        None
    );
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "3.20").await, "3.20 gone"),
        None
    );
    assert_eq!(
        ok(store.list_tags(REPO, None, 100).await, "tags after delete"),
        Vec::<String>::new()
    );
    let e = err(
        store.delete_manifest(REPO, &m2.digest).await,
        "delete m2 again",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert!(ok(
        store.manifest_exists(REPO, &m1.digest).await,
        "m1 stays"
    ));
    assert!(ok(store.repository_exists(REPO).await, "repo stays"));
    // A deleted manifest can be pushed again.
    ok(store.put_manifest(m2.clone()).await, "re-put m2");
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "3.20").await, "re-tagged"),
        Some(record(&m2))
    );

    // Unlinking blobs: the answer is whether anything still needs the bytes.
    let lonely = Digest::sha256(b"lonely");
    ok(store.link_blob(REPO, &lonely, 3).await, "link lonely");
    ok(
        store.link_blob(OTHER, &lonely, 3).await,
        "link lonely other",
    );
    assert!(ok(
        store.unlink_blob(REPO, &lonely).await,
        "unlink one of two"
    ));
    assert_eq!(ok(store.blob_link(REPO, &lonely).await, "unlinked"), None);
    assert!(!ok(store.unlink_blob(OTHER, &lonely).await, "unlink last"));
    let e = err(store.unlink_blob(OTHER, &lonely).await, "unlink again");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");

    // Referrers.
    let subject = m1.digest.clone();
    let sig = manifest(
        REPO,
        r#"{"sig":1}"#,
        None,
        &[],
        Some(&subject),
        Some("application/vnd.example.signature"),
    );
    let mut sbom = manifest(
        REPO,
        r#"{"sbom":1}"#,
        None,
        &[],
        Some(&subject),
        Some("application/spdx+json"),
    );
    sbom.annotations_json = Some(r#"{"org.example":"yes"}"#.to_owned());
    let sbom2 = manifest(
        REPO,
        r#"{"sbom":2}"#,
        None,
        &[],
        Some(&subject),
        Some("application/spdx+json"),
    );
    let elsewhere = manifest(
        OTHER,
        r#"{"sig":"other"}"#,
        None,
        &[],
        Some(&subject),
        Some("application/vnd.example.signature"),
    );
    for m in [&sig, &sbom, &sbom2, &elsewhere] {
        ok(store.put_manifest(m.clone()).await, "put referrer");
    }
    let as_referrer = |m: &NewManifest| Referrer {
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        size: m.content.len() as u64,
        artifact_type: m.artifact_type.clone(),
        annotations_json: m.annotations_json.clone(),
    };
    let mut expected: Vec<Referrer> = [&sig, &sbom, &sbom2].into_iter().map(as_referrer).collect();
    expected.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(
        ok(store.referrers(REPO, &subject, None).await, "referrers"),
        expected
    );
    let mut sboms: Vec<Referrer> = [&sbom, &sbom2].into_iter().map(as_referrer).collect();
    sboms.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(
        ok(
            store
                .referrers(REPO, &subject, Some("application/spdx+json"))
                .await,
            "filtered referrers"
        ),
        sboms
    );
    assert!(
        ok(
            store
                .referrers(REPO, &subject, Some("application/unknown"))
                .await,
            "no such artifact type"
        )
        .is_empty()
    );
    assert!(ok(store.referrers(REPO, &d1, None).await, "no referrers").is_empty());
    assert_eq!(
        ok(
            store.referrers(OTHER, &subject, None).await,
            "other repo referrers"
        ),
        vec![as_referrer(&elsewhere)]
    );
    ok(
        store.delete_manifest(REPO, &sig.digest).await,
        "delete referrer",
    );
    assert_eq!(
        ok(store.referrers(REPO, &subject, None).await, "after delete").len(),
        2
    );

    // Index manifests with children.
    let mut index = manifest(REPO, r#"{"index":1}"#, Some("multi"), &[], None, None);
    index.media_type = "application/vnd.oci.image.index.v1+json".to_owned();
    index.children = vec![m1.digest.clone(), m2.digest.clone()];
    ok(store.put_manifest(index.clone()).await, "put index");
    assert_eq!(
        ok(store.manifest_by_tag(REPO, "multi").await, "index by tag"),
        Some(record(&index))
    );
    ok(
        store.delete_manifest(REPO, &index.digest).await,
        "delete index",
    );
    assert!(ok(
        store.manifest_exists(REPO, &m1.digest).await,
        "child stays"
    ));

    // Upload sessions.
    let session = UploadSession {
        id: "0b5c2a36-7d4e-4f7a-9c1e-2f1d3a4b5c6d".to_owned(),
        repository: "new/repo".to_owned(),
        started_at: 1_700_000_000,
    };
    assert_eq!(ok(store.upload(&session.id).await, "missing upload"), None);
    ok(store.create_upload(session.clone()).await, "create upload");
    assert_eq!(
        ok(store.upload(&session.id).await, "upload"),
        Some(session.clone())
    );
    assert!(
        !ok(
            store.repository_exists("new/repo").await,
            "upload alone creates no repo"
        ),
        "an upload session alone does not create a repository"
    );
    ok(store.delete_upload(&session.id).await, "delete upload");
    assert_eq!(ok(store.upload(&session.id).await, "deleted upload"), None);
    ok(
        store.delete_upload(&session.id).await,
        "delete upload again",
    );
}
