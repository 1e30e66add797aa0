//! The conformance suite every storage backend runs.
//!
//! A backend's tests call [`blob_store_suite`], [`metadata_suite`] and
//! [`account_store_suite`] on a fresh, empty store (and, for a backend implementing both
//! metadata traits, [`account_repository_suite`]); the suites panic (with a message naming
//! the failed expectation) on any deviation from the contracts documented on [`BlobStore`],
//! [`MetadataStore`] and [`AccountStore`].

use std::fmt::Debug;

use berth_proto::{Algorithm, Digest};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::accounts::{
    AccountStore, AuditEvent, AuditFilter, Member, Project, ProjectRole, RefreshToken, Robot, User,
    Visibility,
};
use crate::blob::{BlobStore, ByteStream};
use crate::metadata::{ManifestRecord, MetadataStore, NewManifest, Referrer, UploadSession, Usage};
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
    // The chunked read (what the server sends) yields exactly the same bytes.
    let chunked = ok(store.open_chunks(digest, range).await, "open blob chunks");
    assert_eq!((chunked.len, chunked.total), (reader.len, reader.total));
    let mut chunks = chunked.chunks;
    let mut joined = Vec::with_capacity(out.len());
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(c) => joined.extend_from_slice(&c),
            Err(e) => panic!("reading chunks of blob {digest}: {e}"),
        }
    }
    assert!(
        joined == out,
        "open_chunks and open disagree on {digest} {range:?}"
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
    // A range at an unaligned offset, longer than the filesystem store's map window.
    assert_eq!(
        read_blob(store, &mono_digest, Some((100_003, 2_499_998))).await,
        &mono[100_003..=2_499_998]
    );
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

/// An image manifest whose bytes are `content`, as the server would store it.
pub fn manifest(
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
        owner: "user:alice".to_owned(),
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
    assert_eq!(
        ok(store.count_uploads_by_owner("user:alice").await, "count"),
        1
    );
    assert_eq!(
        ok(store.count_uploads_by_owner("user:bob").await, "count"),
        0
    );
    assert!(ok(store.upload_ids().await, "upload ids").contains(&session.id));
    ok(store.delete_upload(&session.id).await, "delete upload");
    assert_eq!(ok(store.upload(&session.id).await, "deleted upload"), None);
    assert_eq!(
        ok(store.count_uploads_by_owner("user:alice").await, "count"),
        0
    );
    assert!(!ok(store.upload_ids().await, "upload ids").contains(&session.id));
    ok(
        store.delete_upload(&session.id).await,
        "delete upload again",
    );
}

fn new_project(name: &str, public: bool, description: &str) -> Project {
    Project {
        name: name.to_owned(),
        public,
        description: description.to_owned(),
        created_at: 1_700_000_000,
    }
}

fn new_user(name: &str, admin: bool) -> User {
    User {
        name: name.to_owned(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        admin,
        created_at: 1_700_000_100,
        disabled: false,
    }
}

fn new_robot(project: &str, name: &str, can_push: bool, expires_at: Option<i64>) -> Robot {
    Robot {
        project: project.to_owned(),
        name: name.to_owned(),
        secret_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        can_push,
        expires_at,
        revoked: false,
        created_at: 1_700_000_200,
        description: format!("robot {name}"),
    }
}

fn token(id_hash: &str, subject: &str) -> RefreshToken {
    RefreshToken {
        id_hash: id_hash.to_owned(),
        subject: subject.to_owned(),
        // Far in the future: no backend may drop it as expired.
        expires_at: 4_000_000_000,
    }
}

fn event(at: i64, actor: &str, action: &str, resource: &str) -> AuditEvent {
    AuditEvent {
        // Ignored: the store assigns ids.
        id: -7,
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
        client_addr: "192.0.2.10".to_owned(),
        detail: format!("{action} {resource}"),
    }
}

fn member(project: &str, user: &str, role: ProjectRole) -> Member {
    Member {
        project: project.to_owned(),
        user: user.to_owned(),
        role,
    }
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| name(i).to_owned()).collect()
}

async fn audit_ids(store: &dyn AccountStore, f: &AuditFilter, what: &str) -> Vec<i64> {
    ok(store.audit_events(f).await, what)
        .iter()
        .map(|e| e.id)
        .collect()
}

/// Run every access-control expectation against `store` (which must be empty).
pub async fn account_store_suite(store: &dyn AccountStore) {
    account_projects(store).await;
    account_users(store).await;
    account_members(store).await;
    account_robots(store).await;
    account_refresh_tokens(store).await;
    account_cascades(store).await;
    account_audit(store).await;
}

async fn account_projects(store: &dyn AccountStore) {
    assert!(ok(store.list_projects().await, "list empty").is_empty());
    assert_eq!(ok(store.project("library").await, "missing project"), None);

    let library = new_project("library", true, "public images");
    let private = new_project("private-prj", false, "team images");
    let alpha = new_project("alpha", false, "");
    for p in [&library, &private, &alpha] {
        ok(store.create_project(p).await, "create project");
    }
    let e = err(
        store
            .create_project(&new_project("library", false, "impostor"))
            .await,
        "duplicate project",
    );
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    assert_eq!(
        ok(store.project("library").await, "project"),
        Some(library.clone()),
        "a refused duplicate changes nothing"
    );
    assert_eq!(
        ok(store.project("private-prj").await, "private project"),
        Some(private.clone())
    );
    assert_eq!(
        ok(store.project("private-prj").await, "visibility").map(|p| p.visibility()),
        Some(Visibility::Private)
    );
    assert_eq!(ok(store.project("Library").await, "case-sensitive"), None);
    assert_eq!(
        ok(store.list_projects().await, "list"),
        vec![alpha.clone(), library.clone(), private.clone()],
        "projects by name"
    );

    // Update: each field alone, both, neither.
    ok(
        store.update_project("alpha", Some(true), None).await,
        "update public",
    );
    let mut expected = alpha.clone();
    expected.public = true;
    assert_eq!(
        ok(store.project("alpha").await, "updated"),
        Some(expected.clone())
    );
    ok(
        store
            .update_project("alpha", None, Some("now described".to_owned()))
            .await,
        "update description",
    );
    expected.description = "now described".to_owned();
    assert_eq!(
        ok(store.project("alpha").await, "updated"),
        Some(expected.clone())
    );
    ok(
        store
            .update_project("alpha", Some(false), Some(String::new()))
            .await,
        "update both",
    );
    assert_eq!(
        ok(store.project("alpha").await, "updated"),
        Some(alpha.clone())
    );
    ok(
        store.update_project("alpha", None, None).await,
        "update nothing",
    );
    assert_eq!(
        ok(store.project("alpha").await, "unchanged"),
        Some(alpha.clone())
    );
    let e = err(
        store.update_project("nope", Some(true), None).await,
        "update missing project",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    let e = err(
        store.update_project("nope", None, None).await,
        "empty update of missing project",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(ok(store.project("nope").await, "not created"), None);

    // Delete.
    let e = err(store.delete_project("nope").await, "delete missing project");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    ok(store.delete_project("alpha").await, "delete project");
    assert_eq!(ok(store.project("alpha").await, "deleted"), None);
    let e = err(store.delete_project("alpha").await, "delete twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(
        names(&ok(store.list_projects().await, "list"), |p| &p.name),
        ["library", "private-prj"]
    );
    // A deleted name can be taken again.
    ok(store.create_project(&alpha).await, "recreate");
    ok(store.delete_project("alpha").await, "delete again");
}

async fn account_users(store: &dyn AccountStore) {
    assert_eq!(ok(store.count_users().await, "count empty"), 0);
    assert!(ok(store.list_users().await, "list empty").is_empty());
    assert_eq!(ok(store.user("alice").await, "missing user"), None);

    let admin = new_user("admin", true);
    let bob = new_user("bob", false);
    let mut alice = new_user("alice", false);
    let mut carol = new_user("carol", false);
    carol.disabled = true;
    for u in [&bob, &admin, &alice, &carol] {
        ok(store.create_user(u).await, "create user");
    }
    let e = err(
        store.create_user(&new_user("alice", true)).await,
        "duplicate user",
    );
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    assert_eq!(
        ok(store.user("alice").await, "user"),
        Some(alice.clone()),
        "a refused duplicate changes nothing"
    );
    assert_eq!(
        ok(store.user("carol").await, "disabled user"),
        Some(carol.clone())
    );
    assert_eq!(ok(store.count_users().await, "count"), 4);
    assert_eq!(
        ok(store.list_users().await, "list"),
        vec![admin.clone(), alice.clone(), bob.clone(), carol.clone()],
        "users by name"
    );
    assert_eq!(
        ok(store.users_page(0, 2).await, "first page"),
        vec![admin.clone(), alice.clone()]
    );
    assert_eq!(
        ok(store.users_page(2, 2).await, "second page"),
        vec![bob.clone(), carol.clone()]
    );
    assert!(ok(store.users_page(4, 2).await, "past the end").is_empty());

    // Password hashes are stored verbatim.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA";
    ok(store.set_password("alice", hash).await, "set password");
    alice.password_hash = hash.to_owned();
    assert_eq!(
        ok(store.user("alice").await, "after passwd"),
        Some(alice.clone())
    );
    let e = err(
        store.set_password("nobody", hash).await,
        "password of missing user",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(ok(store.user("nobody").await, "not created"), None);

    ok(store.set_admin("alice", true).await, "make admin");
    assert!(ok(store.user("alice").await, "admin").is_some_and(|u| u.admin));
    ok(store.set_admin("alice", true).await, "make admin again");
    ok(store.set_admin("alice", false).await, "revoke admin");
    assert_eq!(
        ok(store.user("alice").await, "not admin"),
        Some(alice.clone())
    );
    let e = err(
        store.set_admin("nobody", true).await,
        "admin of missing user",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");

    let e = err(store.delete_user("nobody").await, "delete missing user");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    ok(store.delete_user("carol").await, "delete user");
    assert_eq!(ok(store.user("carol").await, "deleted"), None);
    assert_eq!(ok(store.count_users().await, "count after delete"), 3);
    let e = err(store.delete_user("carol").await, "delete twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
}

async fn account_members(store: &dyn AccountStore) {
    // Projects library, private-prj; users admin, alice, bob (from the steps before).
    assert!(ok(store.members("library").await, "no members").is_empty());
    assert!(ok(store.projects_of("alice").await, "no projects").is_empty());
    assert_eq!(ok(store.role_of("library", "alice").await, "no role"), None);

    ok(
        store
            .set_member("private-prj", "bob", ProjectRole::Developer)
            .await,
        "add bob",
    );
    ok(
        store
            .set_member("private-prj", "alice", ProjectRole::Guest)
            .await,
        "add alice",
    );
    ok(
        store
            .set_member("library", "alice", ProjectRole::ProjectAdmin)
            .await,
        "add alice to library",
    );
    assert_eq!(
        ok(store.role_of("private-prj", "alice").await, "role"),
        Some(ProjectRole::Guest)
    );
    // Upsert.
    ok(
        store
            .set_member("private-prj", "alice", ProjectRole::Maintainer)
            .await,
        "change role",
    );
    assert_eq!(
        ok(store.role_of("private-prj", "alice").await, "changed role"),
        Some(ProjectRole::Maintainer)
    );
    assert_eq!(
        ok(store.members("private-prj").await, "members"),
        vec![
            member("private-prj", "alice", ProjectRole::Maintainer),
            member("private-prj", "bob", ProjectRole::Developer),
        ],
        "members by user name, one row per user"
    );
    assert_eq!(
        ok(store.projects_of("alice").await, "projects of"),
        vec![
            ("library".to_owned(), ProjectRole::ProjectAdmin),
            ("private-prj".to_owned(), ProjectRole::Maintainer),
        ],
        "memberships by project name"
    );
    assert_eq!(
        ok(store.role_of("library", "bob").await, "not a member"),
        None
    );
    assert_eq!(
        ok(store.role_of("nope", "bob").await, "missing project"),
        None
    );
    assert!(ok(store.members("nope").await, "members of missing").is_empty());
    assert!(ok(store.projects_of("nobody").await, "projects of missing").is_empty());

    // Every role round-trips.
    for role in ProjectRole::ALL {
        ok(store.set_member("library", "bob", role).await, "set role");
        assert_eq!(
            ok(store.role_of("library", "bob").await, "role round trip"),
            Some(role)
        );
    }

    // Missing project or user.
    for (project, user) in [("nope", "alice"), ("library", "nobody"), ("nope", "nobody")] {
        let e = err(
            store.set_member(project, user, ProjectRole::Guest).await,
            "member of missing project or user",
        );
        assert!(
            matches!(e, StorageError::NotFound(_)),
            "{project}/{user}: {e:?}"
        );
        assert_eq!(
            ok(store.role_of(project, user).await, "no row written"),
            None
        );
    }

    // Removal.
    ok(store.remove_member("library", "bob").await, "remove member");
    assert_eq!(ok(store.role_of("library", "bob").await, "removed"), None);
    assert_eq!(
        ok(
            store.role_of("private-prj", "bob").await,
            "other membership stays"
        ),
        Some(ProjectRole::Developer)
    );
    let e = err(store.remove_member("library", "bob").await, "remove twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    let e = err(
        store.remove_member("nope", "nobody").await,
        "remove from missing project",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert!(
        ok(store.user("bob").await, "user stays").is_some(),
        "removing a membership keeps the user"
    );
}

async fn account_robots(store: &dyn AccountStore) {
    const CI: &str = "robot$private-prj+ci";
    const PULL: &str = "robot$private-prj+pull";
    assert_eq!(ok(store.robot(CI).await, "missing robot"), None);
    assert!(ok(store.robots("private-prj").await, "no robots").is_empty());

    let ci = new_robot("private-prj", CI, true, Some(1_800_000_000));
    let pull = new_robot("private-prj", PULL, false, None);
    let lib = new_robot("library", "robot$library+mirror", false, None);
    for r in [&pull, &ci, &lib] {
        ok(store.create_robot(r).await, "create robot");
    }
    assert_eq!(ok(store.robot(CI).await, "robot"), Some(ci.clone()));
    assert_eq!(ok(store.robot(PULL).await, "robot"), Some(pull.clone()));
    assert_eq!(
        ok(store.robots("private-prj").await, "robots"),
        vec![ci.clone(), pull.clone()],
        "robots by name, only the project's"
    );
    assert!(ok(store.robots("nope").await, "robots of missing").is_empty());

    let e = err(
        store
            .create_robot(&new_robot("library", CI, false, None))
            .await,
        "duplicate robot",
    );
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    assert_eq!(
        ok(store.robot(CI).await, "unchanged"),
        Some(ci.clone()),
        "a refused duplicate changes nothing"
    );
    let e = err(
        store
            .create_robot(&new_robot("nope", "robot$nope+ci", true, None))
            .await,
        "robot of missing project",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(ok(store.robot("robot$nope+ci").await, "not created"), None);

    // Revocation keeps the robot (for the listing and the audit trail).
    ok(store.revoke_robot(CI).await, "revoke");
    let mut revoked = ci.clone();
    revoked.revoked = true;
    assert_eq!(ok(store.robot(CI).await, "revoked"), Some(revoked.clone()));
    ok(store.revoke_robot(CI).await, "revoke again");
    assert_eq!(ok(store.robot(CI).await, "still revoked"), Some(revoked));
    assert_eq!(
        ok(store.robot(PULL).await, "other robot"),
        Some(pull.clone()),
        "revocation touches one robot"
    );
    let e = err(store.revoke_robot("robot$x+y").await, "revoke missing");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");

    // Deletion, with the robot's refresh tokens.
    ok(
        store
            .put_refresh_token(&token("h-lib-robot", &lib.name))
            .await,
        "robot token",
    );
    ok(store.delete_robot(&lib.name).await, "delete robot");
    assert_eq!(ok(store.robot(&lib.name).await, "deleted"), None);
    assert_eq!(
        ok(store.refresh_token("h-lib-robot").await, "robot token gone"),
        None
    );
    let e = err(store.delete_robot(&lib.name).await, "delete twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert!(ok(store.project("library").await, "project stays").is_some());
}

async fn account_refresh_tokens(store: &dyn AccountStore) {
    assert_eq!(ok(store.refresh_token("h0").await, "missing token"), None);
    let a1 = token("h-alice-1", "alice");
    let a2 = token("h-alice-2", "alice");
    let b1 = token("h-bob-1", "bob");
    let robot = token("h-robot-1", "robot$private-prj+ci");
    for t in [&a1, &a2, &b1, &robot] {
        ok(store.put_refresh_token(t).await, "put token");
    }
    assert_eq!(
        ok(store.refresh_token("h-alice-1").await, "token"),
        Some(a1.clone())
    );
    assert_eq!(
        ok(store.refresh_token("h-bob-1").await, "token"),
        Some(b1.clone())
    );
    let e = err(
        store.put_refresh_token(&token("h-alice-1", "bob")).await,
        "duplicate token",
    );
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    assert!(
        !e.to_string().contains("h-alice-1"),
        "the error does not echo the token hash: {e}"
    );
    assert_eq!(
        ok(store.refresh_token("h-alice-1").await, "unchanged"),
        Some(a1.clone()),
        "a refused duplicate changes nothing"
    );

    ok(
        store.delete_refresh_tokens_of("alice").await,
        "logout alice",
    );
    assert_eq!(ok(store.refresh_token("h-alice-1").await, "gone"), None);
    assert_eq!(ok(store.refresh_token("h-alice-2").await, "gone"), None);
    assert_eq!(
        ok(store.refresh_token("h-bob-1").await, "others stay"),
        Some(b1.clone())
    );
    ok(store.delete_refresh_tokens_of("alice").await, "idempotent");
    ok(
        store.delete_refresh_tokens_of("nobody").await,
        "unknown subject",
    );
    ok(store.put_refresh_token(&a1).await, "re-put after delete");
    assert_eq!(ok(store.refresh_token("h-alice-1").await, "back"), Some(a1));
}

async fn account_cascades(store: &dyn AccountStore) {
    // State: library {alice: admin}, private-prj {alice: maintainer, bob: developer};
    // robots CI (revoked) and PULL in private-prj; tokens h-alice-1, h-bob-1, h-robot-1.
    ok(store.create_user(&new_user("dave", false)).await, "dave");
    ok(
        store
            .set_member("library", "dave", ProjectRole::Guest)
            .await,
        "dave in library",
    );
    ok(
        store.put_refresh_token(&token("h-dave-1", "dave")).await,
        "dave token",
    );

    // Deleting a user removes their memberships and refresh tokens, nobody else's.
    ok(store.delete_user("bob").await, "delete bob");
    assert!(ok(store.projects_of("bob").await, "bob's memberships").is_empty());
    assert_eq!(
        names(&ok(store.members("private-prj").await, "members"), |m| &m
            .user),
        ["alice"]
    );
    assert_eq!(
        ok(store.refresh_token("h-bob-1").await, "bob's token"),
        None
    );
    assert!(ok(store.refresh_token("h-alice-1").await, "alice's token").is_some());
    // A new user of the same name starts with nothing.
    ok(store.create_user(&new_user("bob", false)).await, "new bob");
    assert!(ok(store.projects_of("bob").await, "new bob").is_empty());

    // Deleting a project removes its memberships, robots and the robots' tokens.
    ok(store.delete_project("private-prj").await, "delete project");
    assert!(ok(store.members("private-prj").await, "members gone").is_empty());
    assert_eq!(
        ok(store.projects_of("alice").await, "alice keeps library"),
        vec![("library".to_owned(), ProjectRole::ProjectAdmin)]
    );
    assert!(ok(store.robots("private-prj").await, "robots gone").is_empty());
    assert_eq!(
        ok(store.robot("robot$private-prj+ci").await, "robot gone"),
        None
    );
    assert_eq!(
        ok(store.refresh_token("h-robot-1").await, "robot token gone"),
        None
    );
    assert!(
        ok(store.refresh_token("h-alice-1").await, "user token stays").is_some(),
        "a project's deletion leaves users' tokens"
    );
    assert!(ok(store.user("alice").await, "users stay").is_some());
    assert_eq!(
        ok(
            store.role_of("library", "dave").await,
            "other project untouched"
        ),
        Some(ProjectRole::Guest)
    );
    // Recreated, the project starts empty.
    ok(
        store
            .create_project(&new_project("private-prj", false, ""))
            .await,
        "recreate",
    );
    assert!(ok(store.members("private-prj").await, "no members").is_empty());
    assert!(ok(store.robots("private-prj").await, "no robots").is_empty());
}

async fn account_audit(store: &dyn AccountStore) {
    let all = AuditFilter {
        limit: AuditFilter::MAX_LIMIT,
        ..AuditFilter::default()
    };
    assert!(ok(store.audit_events(&all).await, "empty log").is_empty());

    let events = [
        event(100, "alice", "login", "registry"),
        event(110, "alice", "push", "library/nginx:latest"),
        event(120, "bob", "login_failed", "registry"),
        event(130, "admin", "project.create", "project:private-prj"),
        event(130, "alice", "push", "library/nginx-extra:1"),
        event(140, "bob", "push", "private-prj/app:v1"),
        event(150, "alice", "delete", "library/nginx@sha256:00"),
        event(160, "ci", "push", "a_b/x"),
        event(170, "ci", "push", "axb/x"),
        // Out-of-order clock: ordering is by insertion (id), not by `at`.
        event(105, "admin", "user.create", "user:dave"),
    ];
    for e in &events {
        ok(store.audit(e).await, "audit");
    }
    let got = ok(store.audit_events(&all).await, "all events");
    assert_eq!(got.len(), events.len());
    let ids: Vec<i64> = got.iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, distinct ids: {ids:?}"
    );
    assert!(!ids.contains(&-7), "ids are assigned by the store: {ids:?}");
    // Oldest-first view equals the inserted events, ids aside.
    for (stored, inserted) in got.iter().rev().zip(&events) {
        assert_eq!(
            AuditEvent {
                id: inserted.id,
                ..stored.clone()
            },
            inserted.clone(),
            "event stored verbatim"
        );
    }
    // ids[k] is the id of events[events.len() - 1 - k].
    let id_of = |i: usize| ids[events.len() - 1 - i];

    let f = |f: AuditFilter| AuditFilter { limit: 1000, ..f };
    let by_actor = audit_ids(
        store,
        &f(AuditFilter {
            actor: Some("alice".to_owned()),
            ..AuditFilter::default()
        }),
        "by actor",
    )
    .await;
    assert_eq!(by_actor, [id_of(6), id_of(4), id_of(1), id_of(0)]);
    let by_action = audit_ids(
        store,
        &f(AuditFilter {
            action: Some("push".to_owned()),
            ..AuditFilter::default()
        }),
        "by action",
    )
    .await;
    assert_eq!(
        by_action,
        [id_of(8), id_of(7), id_of(5), id_of(4), id_of(1)]
    );
    let both = audit_ids(
        store,
        &f(AuditFilter {
            actor: Some("alice".to_owned()),
            action: Some("push".to_owned()),
            ..AuditFilter::default()
        }),
        "by actor and action",
    )
    .await;
    assert_eq!(both, [id_of(4), id_of(1)]);
    assert!(
        audit_ids(
            store,
            &f(AuditFilter {
                actor: Some("Alice".to_owned()),
                ..AuditFilter::default()
            }),
            "actor is exact",
        )
        .await
        .is_empty()
    );

    // Resource prefixes are literal: no wildcards, no case folding.
    let prefix = |p: &str| {
        f(AuditFilter {
            resource_prefix: Some(p.to_owned()),
            ..AuditFilter::default()
        })
    };
    assert_eq!(
        audit_ids(store, &prefix("library/nginx"), "prefix").await,
        [id_of(6), id_of(4), id_of(1)]
    );
    assert_eq!(
        audit_ids(store, &prefix("library/nginx:"), "prefix").await,
        [id_of(1)]
    );
    assert_eq!(
        audit_ids(store, &prefix("a_"), "underscore is literal").await,
        [id_of(7)]
    );
    assert!(
        audit_ids(store, &prefix("%"), "percent is literal")
            .await
            .is_empty()
    );
    assert!(
        audit_ids(store, &prefix("LIBRARY/"), "case-sensitive")
            .await
            .is_empty()
    );
    assert!(
        audit_ids(
            store,
            &prefix("library/nginx:latest+more"),
            "longer than resource"
        )
        .await
        .is_empty()
    );
    assert_eq!(
        audit_ids(store, &prefix(""), "empty prefix").await.len(),
        events.len()
    );

    // Time window: since inclusive, until exclusive.
    let window = audit_ids(
        store,
        &f(AuditFilter {
            since: Some(110),
            until: Some(140),
            ..AuditFilter::default()
        }),
        "window",
    )
    .await;
    assert_eq!(window, [id_of(4), id_of(3), id_of(2), id_of(1)]);
    let since = audit_ids(
        store,
        &f(AuditFilter {
            since: Some(160),
            ..AuditFilter::default()
        }),
        "since",
    )
    .await;
    assert_eq!(since, [id_of(8), id_of(7)]);
    let until = audit_ids(
        store,
        &f(AuditFilter {
            until: Some(110),
            ..AuditFilter::default()
        }),
        "until",
    )
    .await;
    assert_eq!(until, [id_of(9), id_of(0)]);

    // Paging backwards by id.
    let page = |before_id: Option<i64>| AuditFilter {
        before_id,
        limit: 4,
        ..AuditFilter::default()
    };
    let first = audit_ids(store, &page(None), "page 1").await;
    assert_eq!(first, ids[..4]);
    let second = audit_ids(store, &page(first.last().copied()), "page 2").await;
    assert_eq!(second, ids[4..8]);
    let third = audit_ids(store, &page(second.last().copied()), "page 3").await;
    assert_eq!(third, ids[8..]);
    assert!(
        audit_ids(store, &page(third.last().copied()), "past the end")
            .await
            .is_empty()
    );
    let pushes_page = audit_ids(
        store,
        &AuditFilter {
            action: Some("push".to_owned()),
            before_id: Some(id_of(5)),
            limit: 1,
            ..AuditFilter::default()
        },
        "filtered page",
    )
    .await;
    assert_eq!(pushes_page, [id_of(4)]);

    // Limits: 0 returns nothing, the default is DEFAULT_LIMIT, everything is capped.
    assert!(
        audit_ids(
            store,
            &AuditFilter {
                limit: 0,
                ..AuditFilter::default()
            },
            "limit 0",
        )
        .await
        .is_empty()
    );
    let total = AuditFilter::MAX_LIMIT as usize + 5;
    for i in events.len()..total {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        ok(
            store
                .audit(&event(1000 + i, "load", "pull", "library/busybox"))
                .await,
            "audit many",
        );
    }
    let default = ok(
        store.audit_events(&AuditFilter::default()).await,
        "default limit",
    );
    assert_eq!(default.len(), AuditFilter::DEFAULT_LIMIT as usize);
    let capped = ok(
        store
            .audit_events(&AuditFilter {
                limit: u32::MAX,
                ..AuditFilter::default()
            })
            .await,
        "capped",
    );
    assert_eq!(
        capped.len(),
        AuditFilter::MAX_LIMIT as usize,
        "at most MAX_LIMIT events per query"
    );
    assert_eq!(
        capped[0].at,
        1000 + i64::try_from(total - 1).unwrap_or(i64::MAX),
        "the newest ones"
    );
    let rest = audit_ids(
        store,
        &AuditFilter {
            before_id: capped.last().map(|e| e.id),
            limit: u32::MAX,
            ..AuditFilter::default()
        },
        "rest",
    )
    .await;
    assert_eq!(rest.len(), total - AuditFilter::MAX_LIMIT as usize);
    assert_eq!(
        rest.last().copied(),
        Some(id_of(0)),
        "paging reaches the oldest event"
    );
}

/// For a backend implementing both metadata traits over one store (which must be empty):
/// a project is not deleted while repositories under it exist, and only those count.
pub async fn account_repository_suite(accounts: &dyn AccountStore, metadata: &dyn MetadataStore) {
    let d = Digest::sha256(b"layer");
    ok(
        accounts
            .create_project(&new_project("team", false, ""))
            .await,
        "team",
    );
    ok(accounts.create_user(&new_user("erin", false)).await, "erin");
    ok(
        accounts
            .set_member("team", "erin", ProjectRole::Developer)
            .await,
        "erin in team",
    );
    ok(
        accounts
            .create_robot(&new_robot("team", "robot$team+ci", true, None))
            .await,
        "team robot",
    );
    ok(metadata.link_blob("team/app/web", &d, 5).await, "repo");

    let e = err(accounts.delete_project("team").await, "project with repos");
    assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    assert!(
        e.to_string().contains("team/app/web"),
        "the error names a repository: {e}"
    );
    assert!(
        ok(accounts.project("team").await, "kept").is_some(),
        "a refused delete changes nothing"
    );
    assert_eq!(
        ok(accounts.role_of("team", "erin").await, "member kept"),
        Some(ProjectRole::Developer)
    );
    assert!(ok(accounts.robot("robot$team+ci").await, "robot kept").is_some());

    // Names that merely start like the project are not its repositories.
    for (project, repo) in [
        ("lib", "library/nginx"),
        ("lib", "lib"),
        ("lib", "lib0/x"),
        ("lib", "lib.x/y"),
        ("lib", "lib-x/y"),
        ("tea", "team/app/web"),
    ] {
        ok(metadata.link_blob(repo, &d, 5).await, "lookalike repo");
        if ok(accounts.project(project).await, "exists").is_none() {
            ok(
                accounts
                    .create_project(&new_project(project, true, ""))
                    .await,
                "lookalike project",
            );
        }
    }
    ok(
        accounts.delete_project("lib").await,
        "lookalikes do not block",
    );
    ok(
        accounts.delete_project("tea").await,
        "lookalikes do not block",
    );
    let e = err(accounts.delete_project("team").await, "still blocked");
    assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    // And a missing project is NotFound even with repositories under its name.
    ok(metadata.link_blob("ghost/app", &d, 5).await, "orphan repo");
    let e = err(accounts.delete_project("ghost").await, "missing project");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
}

/// Web-console sessions (on an empty store): stored by hash, tied to an existing user,
/// deleted one by one, per user, and with the user.
pub async fn session_suite(store: &dyn AccountStore) {
    use crate::accounts::ConsoleSession;
    let session = |id_hash: &str, user: &str| ConsoleSession {
        id_hash: id_hash.to_owned(),
        username: user.to_owned(),
        created_at: 1_700_000_000,
        expires_at: 4_000_000_000,
    };
    ok(store.create_user(&new_user("sam", false)).await, "sam");
    ok(store.create_user(&new_user("tia", false)).await, "tia");
    let e = err(
        store.create_session(&session("h0", "nobody")).await,
        "session of a missing user",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(ok(store.session("h0").await, "missing session"), None);

    for (h, u) in [("h1", "sam"), ("h2", "sam"), ("h3", "tia")] {
        ok(store.create_session(&session(h, u)).await, "create session");
    }
    let e = err(
        store.create_session(&session("h1", "tia")).await,
        "duplicate id hash",
    );
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    assert!(
        !e.to_string().contains("h1"),
        "the error never prints the hash: {e}"
    );
    assert_eq!(
        ok(store.session("h1").await, "get"),
        Some(session("h1", "sam")),
        "a refused duplicate changes nothing"
    );

    // An expired session is returned until purged (the caller checks expiry).
    let expired = ConsoleSession {
        expires_at: 1,
        ..session("old", "tia")
    };
    ok(store.create_session(&expired).await, "expired session");
    assert!(matches!(
        ok(store.session("old").await, "expired"),
        None | Some(ConsoleSession { expires_at: 1, .. })
    ));

    ok(store.delete_session("h1").await, "delete one");
    ok(
        store.delete_session("h1").await,
        "delete again (idempotent)",
    );
    assert_eq!(ok(store.session("h1").await, "deleted"), None);
    assert!(ok(store.session("h2").await, "other kept").is_some());

    ok(store.delete_sessions_of("sam").await, "delete sam's");
    assert_eq!(ok(store.session("h2").await, "sam's gone"), None);
    assert!(ok(store.session("h3").await, "tia's kept").is_some());

    ok(store.delete_user("tia").await, "delete tia");
    assert_eq!(
        ok(
            store.session("h3").await,
            "deleting the user ends its sessions"
        ),
        None
    );
    ok(store.delete_user("sam").await, "delete sam");
}

/// The web console's queries (on an empty store): usage by project, repository summaries,
/// tag details with sizes, search; all paged by name.
pub async fn console_suite(store: &dyn MetadataStore) {
    let layer = Digest::sha256(b"console layer");
    let config = Digest::sha256(b"console config");
    let shared = Digest::sha256(b"console shared");
    ok(store.link_blob("shop/web", &layer, 1000).await, "layer");
    ok(store.link_blob("shop/web", &config, 100).await, "config");
    ok(store.link_blob("shop/web", &shared, 10).await, "shared");
    ok(
        store.link_blob("shop/api/v1", &shared, 10).await,
        "shared again",
    );
    ok(
        store.link_blob("shopping/x", &layer, 1000).await,
        "lookalike",
    );

    let image = manifest(
        "shop/web",
        r#"{"m":"image"}"#,
        Some("v1"),
        &[&config, &layer],
        None,
        None,
    );
    ok(store.put_manifest(image.clone()).await, "image");
    let image_size = image.content.len() as u64;
    // Many tags on the same manifest.
    for t in ["v2", "v3", "latest"] {
        ok(
            store
                .put_manifest(NewManifest {
                    tag: Some(t.to_owned()),
                    ..image.clone()
                })
                .await,
            "retag",
        );
    }
    // An index over the image, with a blob of its own.
    let index_content = r#"{"m":"index"}"#;
    let index = NewManifest {
        media_type: "application/vnd.oci.image.index.v1+json".to_owned(),
        children: vec![image.digest.clone()],
        blobs: vec![shared.clone()],
        ..manifest("shop/web", index_content, Some("multi"), &[], None, None)
    };
    ok(store.put_manifest(index).await, "index");

    let usage = ok(store.project_usage("shop").await, "usage");
    assert_eq!(
        usage.repositories, 2,
        "shop/web and shop/api/v1, not shopping/x"
    );
    assert_eq!(
        usage.bytes,
        1000 + 100 + 10 + image_size + index_content.len() as u64,
        "a blob linked twice counts once; manifests count"
    );
    assert_eq!(
        ok(store.project_usage("nothing").await, "empty"),
        Usage::default()
    );

    let all = ok(
        store.repository_summaries("shop", None, 10).await,
        "summaries",
    );
    assert_eq!(names(&all, |r| &r.name), ["shop/api/v1", "shop/web"]);
    let web = &all[1];
    assert_eq!(web.tag_count, 5);
    assert!(web.last_push.is_some(), "pushed");
    assert_eq!(
        web.bytes,
        1000 + 100 + 10 + image_size + index_content.len() as u64
    );
    assert_eq!(all[0].tag_count, 0);
    assert_eq!(all[0].bytes, 10);
    let page = ok(
        store
            .repository_summaries("shop", Some("shop/api/v1"), 10)
            .await,
        "after",
    );
    assert_eq!(names(&page, |r| &r.name), ["shop/web"]);
    let page = ok(store.repository_summaries("shop", None, 1).await, "limit");
    assert_eq!(names(&page, |r| &r.name), ["shop/api/v1"]);
    assert_eq!(
        ok(store.repository_summary("shop/web").await, "one").as_ref(),
        Some(web)
    );
    assert_eq!(
        ok(store.repository_summary("shop/none").await, "missing"),
        None
    );

    let tags = ok(store.tag_details("shop/web", None, 100).await, "tags");
    assert_eq!(
        names(&tags, |t| &t.tag),
        ["latest", "multi", "v1", "v2", "v3"]
    );
    let v1 = &tags[2];
    assert_eq!(v1.digest, image.digest);
    assert_eq!(v1.bytes, image_size + 1100, "manifest, config and layer");
    let multi = &tags[1];
    assert_eq!(multi.media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        multi.bytes,
        index_content.len() as u64 + image_size + 1110,
        "the index, its child manifest, and every distinct blob below it"
    );
    assert!(tags.iter().all(|t| t.pushed_at > 0));
    let page = ok(
        store.tag_details("shop/web", Some("multi"), 2).await,
        "page",
    );
    assert_eq!(names(&page, |t| &t.tag), ["v1", "v2"]);
    assert!(
        ok(
            store.tag_details("shop/none", None, 10).await,
            "missing repo"
        )
        .is_empty()
    );

    // Untagged: an image pushed by digest is listed; tagged manifests, an index's child
    // and a referrer are not.
    assert!(
        ok(
            store.untagged_manifests("shop/web", None, 10).await,
            "none yet"
        )
        .is_empty(),
        "v1's image is tagged, and a child of multi"
    );
    let mut loose = Vec::new();
    for n in 0..3 {
        let m = manifest(
            "shop/web",
            &format!(r#"{{"m":"loose {n}"}}"#),
            None,
            &[&config],
            None,
            None,
        );
        ok(store.put_manifest(m.clone()).await, "loose");
        loose.push(m);
    }
    let referrer = manifest(
        "shop/web",
        r#"{"m":"signature"}"#,
        None,
        &[],
        Some(&image.digest),
        None,
    );
    ok(store.put_manifest(referrer).await, "referrer");
    loose.sort_by_key(|m| m.digest.to_string());
    let untagged = ok(
        store.untagged_manifests("shop/web", None, 10).await,
        "untagged",
    );
    assert_eq!(
        untagged.iter().map(|u| &u.digest).collect::<Vec<_>>(),
        loose.iter().map(|m| &m.digest).collect::<Vec<_>>()
    );
    assert_eq!(untagged[0].bytes, loose[0].content.len() as u64 + 100);
    assert_eq!(untagged[0].media_type, loose[0].media_type);
    assert!(untagged.iter().all(|u| u.pushed_at > 0));
    let first = loose[0].digest.to_string();
    let page = ok(
        store.untagged_manifests("shop/web", Some(&first), 1).await,
        "untagged page",
    );
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].digest, loose[1].digest);
    // Tagging one takes it off the list; deleting its tag puts it back.
    ok(
        store
            .put_manifest(NewManifest {
                tag: Some("loose".to_owned()),
                ..loose[0].clone()
            })
            .await,
        "tag loose",
    );
    assert_eq!(
        ok(
            store.untagged_manifests("shop/web", None, 10).await,
            "tagged"
        )
        .len(),
        2
    );
    ok(store.delete_tag("shop/web", "loose").await, "untag");
    assert_eq!(
        ok(
            store.untagged_manifests("shop/web", None, 10).await,
            "untagged"
        )
        .len(),
        3
    );
    for m in &loose {
        ok(
            store.delete_manifest("shop/web", &m.digest).await,
            "clean up",
        );
    }

    let found = ok(store.search_repositories("shop", None, 10).await, "search");
    assert_eq!(found, ["shop/api/v1", "shop/web", "shopping/x"]);
    let found = ok(store.search_repositories("web", None, 10).await, "search");
    assert_eq!(found, ["shop/web"]);
    let found = ok(
        store
            .search_repositories("shop", Some("shop/api/v1"), 1)
            .await,
        "search page",
    );
    assert_eq!(found, ["shop/web"]);
    assert!(
        ok(
            store.search_repositories("%", None, 10).await,
            "no wildcards"
        )
        .is_empty(),
        "% is not a wildcard"
    );
}

/// A manifest candidate of `repository` is waiting.
async fn has_candidate(
    store: &dyn crate::lifecycle::LifecycleStore,
    kind: crate::lifecycle::CandidateKind,
    repository: &str,
    digest: &Digest,
) -> bool {
    let all = ok(store.gc_candidates(kind, None, 10_000).await, "candidates");
    all.iter()
        .any(|c| c.repository == repository && &c.digest == digest)
}

/// The lifecycle primitives (change log, tombstones, pins, quotas, immutable tags,
/// policies, pull times, runs, audit pruning) on a store implementing all three metadata
/// traits (which must be empty).
pub async fn lifecycle_suite(
    meta: &dyn MetadataStore,
    life: &dyn crate::lifecycle::LifecycleStore,
    accounts: &dyn AccountStore,
) {
    use crate::lifecycle::{BlobVerdict, CandidateKind, GcRun, ManifestVerdict, PushLimits};
    const APP: &str = "p1/app";
    const OTHER: &str = "p1/other";
    let future = i64::MAX / 2;
    let past = 0;
    let a = Digest::sha256(b"lifecycle a");
    let b = Digest::sha256(b"lifecycle b");
    let c = Digest::sha256(b"lifecycle c");

    // Quota usage counts each blob once per project, plus manifest bytes.
    ok(meta.link_blob(APP, &a, 100).await, "link a");
    ok(meta.link_blob(APP, &b, 200).await, "link b");
    assert!(
        has_candidate(life, CandidateKind::Blob, "", &a).await,
        "a link is a change"
    );
    let m1 = manifest(APP, r#"{"m":1}"#, Some("v1"), &[&a, &b], None, None);
    let limits = PushLimits {
        project: "p1".into(),
        quota_bytes: Some(1_000_000),
        ..PushLimits::default()
    };
    ok(
        life.put_manifest_checked(m1.clone(), &limits).await,
        "put m1",
    );
    let usage = ok(life.quota_usage("p1").await, "usage").bytes;
    assert_eq!(usage, 300 + m1.content.len() as u64);
    assert!(ok(life.project_has_blob("p1", &a).await, "has a"));
    assert!(!ok(life.project_has_blob("p2", &a).await, "other project"));
    assert_eq!(
        ok(life.mount_blob(Some(APP), OTHER, &a).await, "mount a"),
        Some(100)
    );
    assert_eq!(
        ok(life.mount_blob(Some(OTHER), APP, &c).await, "mount unknown"),
        None
    );
    let m2 = manifest(OTHER, r#"{"m":2}"#, Some("v1"), &[&a], None, None);
    ok(
        life.put_manifest_checked(m2.clone(), &limits).await,
        "put m2",
    );
    let usage2 = ok(life.quota_usage("p1").await, "usage").bytes;
    assert_eq!(usage2, usage + m2.content.len() as u64, "a counted once");
    assert_eq!(ok(life.quota_usage("p1").await, "usage").repositories, 2);

    // A refused push changes nothing.
    ok(meta.link_blob(APP, &c, 5000).await, "link c");
    let big = manifest(APP, r#"{"m":"big"}"#, Some("big"), &[&c], None, None);
    let tight = PushLimits {
        quota_bytes: Some(usage2 + 10),
        ..limits.clone()
    };
    let e = err(
        life.put_manifest_checked(big.clone(), &tight).await,
        "over quota",
    );
    match &e {
        StorageError::Denied(m) => assert!(m.contains("quota"), "{m}"),
        other => panic!("over quota: {other:?}"),
    }
    assert_eq!(ok(life.quota_usage("p1").await, "usage").bytes, usage2);
    assert_eq!(ok(meta.manifest_by_tag(APP, "big").await, "big tag"), None);
    let few = PushLimits {
        max_repositories: Some(2),
        ..limits.clone()
    };
    let newrepo = manifest("p1/third", r#"{"m":3}"#, Some("t"), &[], None, None);
    let e = err(life.put_manifest_checked(newrepo, &few).await, "repo limit");
    assert!(matches!(e, StorageError::Denied(_)), "{e:?}");
    assert!(!ok(meta.repository_exists("p1/third").await, "rolled back"));

    // Immutable tags: created once, never moved; re-put of the same digest is fine.
    let immutable = PushLimits {
        immutable_rule: Some("v*".into()),
        ..limits.clone()
    };
    ok(
        life.put_manifest_checked(m1.clone(), &immutable).await,
        "same digest",
    );
    let moved = manifest(APP, r#"{"m":"moved"}"#, Some("v1"), &[&a], None, None);
    let e = err(
        life.put_manifest_checked(moved, &immutable).await,
        "move immutable",
    );
    match &e {
        StorageError::Denied(m) => assert!(m.contains("v*"), "{m}"),
        other => panic!("immutable: {other:?}"),
    }

    // Change log and manifest collection.
    ok(meta.delete_tag(APP, "v1").await, "untag m1");
    assert!(has_candidate(life, CandidateKind::Manifest, APP, &m1.digest).await);
    assert_eq!(
        ok(
            life.collect_manifest(APP, &m1.digest, past, false).await,
            "young"
        ),
        ManifestVerdict::TooRecent
    );
    assert_eq!(
        ok(
            life.collect_manifest(APP, &m1.digest, future, true).await,
            "dry"
        ),
        ManifestVerdict::Removed(m1.content.len() as u64)
    );
    assert!(ok(
        meta.manifest_exists(APP, &m1.digest).await,
        "dry run kept it"
    ));
    assert_eq!(
        ok(
            life.collect_manifest(APP, &m1.digest, future, false).await,
            "collect"
        ),
        ManifestVerdict::Removed(m1.content.len() as u64)
    );
    assert!(!ok(meta.manifest_exists(APP, &m1.digest).await, "gone"));
    assert!(!has_candidate(life, CandidateKind::Manifest, APP, &m1.digest).await);
    assert_eq!(
        ok(life.quota_usage("p1").await, "usage").bytes,
        usage2 - 200 - m1.content.len() as u64,
        "b no longer counted, a still is"
    );
    assert!(
        has_candidate(life, CandidateKind::Blob, "", &b).await,
        "b lost a reference"
    );
    assert_eq!(ok(life.blob_references(&b, 10).await, "refs b"), vec![]);
    assert_eq!(
        ok(life.blob_references(&a, 10).await, "refs a"),
        vec![(OTHER.to_owned(), m2.digest.clone())]
    );
    assert_eq!(
        ok(
            life.collect_manifest(OTHER, &m2.digest, future, false)
                .await,
            "tagged"
        ),
        ManifestVerdict::Kept
    );

    // Blob collection: referenced blobs are kept, others tombstoned and unreachable.
    assert_eq!(
        ok(life.tombstone_blob(&a, future, false).await, "a"),
        BlobVerdict::Kept
    );
    assert_eq!(
        ok(life.tombstone_blob(&b, past, false).await, "b young"),
        BlobVerdict::TooRecent
    );
    assert_eq!(
        ok(life.tombstone_blob(&b, future, true).await, "b dry"),
        BlobVerdict::Tombstoned
    );
    assert_eq!(
        ok(meta.blob_link(APP, &b).await, "dry kept link"),
        Some(200)
    );
    assert_eq!(
        ok(life.tombstone_blob(&b, future, false).await, "b"),
        BlobVerdict::Tombstoned
    );
    assert_eq!(ok(life.tombstones().await, "tombstones"), vec![b.clone()]);
    assert_eq!(ok(meta.blob_link(APP, &b).await, "link removed"), None);
    let e = err(meta.link_blob(APP, &b, 200).await, "link tombstoned");
    assert!(matches!(e, StorageError::BlobUnknown(_)), "{e:?}");
    assert_eq!(
        ok(life.mount_blob(None, APP, &b).await, "mount tombstoned"),
        None
    );
    let e = err(life.pin_upload("u-b", &b).await, "pin tombstoned");
    assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    let uses_b = manifest(APP, r#"{"m":"b"}"#, Some("b"), &[&b], None, None);
    let e = err(
        meta.put_manifest(uses_b.clone()).await,
        "reference tombstoned",
    );
    assert!(matches!(e, StorageError::BlobUnknown(_)), "{e:?}");
    ok(life.clear_tombstone(&b).await, "clear");
    assert!(ok(life.tombstones().await, "tombstones").is_empty());
    ok(meta.link_blob(APP, &b, 200).await, "re-upload b");
    ok(meta.put_manifest(uses_b.clone()).await, "reference b again");

    // An upload pin protects a blob until the session is gone.
    let d = Digest::sha256(b"lifecycle d");
    ok(
        meta.create_upload(UploadSession {
            id: "u-d".into(),
            repository: APP.into(),
            started_at: 10,
            owner: "user:alice".into(),
        })
        .await,
        "upload",
    );
    ok(life.pin_upload("u-d", &d).await, "pin d");
    ok(meta.link_blob(APP, &d, 7).await, "link d");
    assert_eq!(
        ok(life.tombstone_blob(&d, future, false).await, "pinned"),
        BlobVerdict::Kept
    );
    assert_eq!(
        ok(life.stale_uploads(11, 10).await, "stale"),
        vec![UploadSession {
            id: "u-d".into(),
            repository: APP.into(),
            started_at: 10,
            owner: "user:alice".into()
        }]
    );
    assert!(ok(life.stale_uploads(10, 10).await, "not stale").is_empty());
    ok(meta.delete_upload("u-d").await, "finish upload");
    assert!(
        has_candidate(life, CandidateKind::Blob, "", &d).await,
        "unpinned"
    );
    assert_eq!(
        ok(life.tombstone_blob(&d, future, false).await, "unpinned"),
        BlobVerdict::Tombstoned
    );
    ok(life.clear_tombstone(&d).await, "clear d");

    // Index children and referrers' subjects are kept; attached referrers too.
    let child = manifest(APP, r#"{"child":1}"#, None, &[&a], None, None);
    ok(meta.put_manifest(child.clone()).await, "child");
    let mut index = manifest(APP, r#"{"index":1}"#, Some("idx"), &[], None, None);
    index.children = vec![child.digest.clone()];
    ok(meta.put_manifest(index.clone()).await, "index");
    assert_eq!(
        ok(
            life.collect_manifest(APP, &child.digest, future, false)
                .await,
            "child"
        ),
        ManifestVerdict::Kept
    );
    let mut orphan_index = index.clone();
    orphan_index.children = vec![Digest::sha256(b"missing child")];
    orphan_index.content = br#"{"index":2}"#.to_vec();
    orphan_index.digest = Digest::sha256(&orphan_index.content);
    let e = err(meta.put_manifest(orphan_index).await, "missing child");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    let subject = manifest(APP, r#"{"subject":1}"#, None, &[&a], None, None);
    ok(meta.put_manifest(subject.clone()).await, "subject");
    let sig = manifest(APP, r#"{"sig":1}"#, None, &[], Some(&subject.digest), None);
    ok(meta.put_manifest(sig.clone()).await, "referrer");
    assert_eq!(
        ok(
            life.collect_manifest(APP, &subject.digest, future, false)
                .await,
            "subject"
        ),
        ManifestVerdict::Kept
    );
    assert_eq!(
        ok(
            life.collect_manifest(APP, &sig.digest, future, false).await,
            "attached"
        ),
        ManifestVerdict::Kept
    );
    ok(
        meta.delete_manifest(APP, &subject.digest).await,
        "delete subject",
    );
    assert!(has_candidate(life, CandidateKind::Manifest, APP, &sig.digest).await);
    assert_eq!(
        ok(
            life.collect_manifest(APP, &sig.digest, future, false).await,
            "dangling"
        ),
        ManifestVerdict::Removed(sig.content.len() as u64)
    );
    let (blobs, children) = ok(
        life.manifest_references(APP, &index.digest).await,
        "index refs",
    );
    assert!(blobs.is_empty());
    assert_eq!(children, vec![child.digest.clone()]);

    // Policies.
    let default = ok(life.project_policy("p1").await, "default policy");
    assert_eq!(default.quota_bytes, None);
    assert!(default.immutable_tags.is_empty());
    let policy = crate::lifecycle::ProjectPolicy {
        project: "p1".into(),
        quota_bytes: Some(1 << 30),
        max_repositories: Some(5),
        immutable_tags: vec!["v*".into(), "release-*".into()],
        retention_json: Some(r#"{"keep_last":3}"#.into()),
    };
    ok(life.set_project_policy(&policy).await, "set policy");
    assert_eq!(ok(life.project_policy("p1").await, "policy"), policy);
    assert_eq!(ok(life.project_policies().await, "policies"), vec![policy]);

    // Pull times, recorded in batches.
    ok(
        life.record_pulls(&[
            (OTHER.into(), m2.digest.clone(), 50),
            (OTHER.into(), m2.digest.clone(), 40),
            (OTHER.into(), Digest::sha256(b"not a manifest"), 60),
        ])
        .await,
        "pulls",
    );
    let times = ok(life.tag_times(OTHER).await, "tag times");
    assert_eq!(times.len(), 1);
    assert_eq!(times[0].tag, "v1");
    assert_eq!(times[0].digest, m2.digest);
    assert_eq!(times[0].pulled_at, Some(50), "newest pull wins");

    // Runs.
    let run = GcRun {
        kind: "gc".into(),
        started_by: "cli".into(),
        dry_run: false,
        started_at: 5,
        finished_at: 6,
        manifests_removed: 1,
        blobs_removed: 2,
        bytes_freed: 300,
        detail: "x".into(),
        ..GcRun::default()
    };
    let id1 = ok(life.record_gc_run(&run).await, "run 1");
    let id2 = ok(life.record_gc_run(&run).await, "run 2");
    assert!(id2 > id1);
    let runs = ok(life.gc_runs(10).await, "runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, id2, "newest first");
    assert_eq!(
        GcRun {
            id: 0,
            ..runs[1].clone()
        },
        run
    );

    // Audit pruning by age and by count.
    for at in 1..=10 {
        ok(
            accounts.audit(&event(at, "alice", "push", "r")).await,
            "audit",
        );
    }
    assert_eq!(ok(life.prune_audit(Some(4), None).await, "by age"), 3);
    assert_eq!(ok(life.prune_audit(None, Some(5)).await, "by count"), 2);
    let left = ok(accounts.audit_events(&AuditFilter::default()).await, "left");
    assert_eq!(
        left.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![10, 9, 8, 7, 6]
    );
    assert_eq!(ok(life.prune_audit(None, Some(100)).await, "nothing"), 0);

    // Deleting a repository releases what it referenced.
    ok(life.delete_repository(OTHER).await, "delete repo");
    assert!(!ok(meta.repository_exists(OTHER).await, "gone"));
    let e = err(life.delete_repository(OTHER).await, "twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    ok(life.delete_repository(APP).await, "delete app");
    assert_eq!(ok(life.quota_usage("p1").await, "usage").bytes, 0);
    assert_eq!(ok(life.quota_usage("p1").await, "usage").repositories, 0);
    assert!(has_candidate(life, CandidateKind::Blob, "", &a).await);
    for blob in [&a, &b, &c] {
        assert_eq!(
            ok(
                life.tombstone_blob(blob, future, false).await,
                "after delete"
            ),
            BlobVerdict::Tombstoned,
            "{blob}"
        );
        ok(life.clear_tombstone(blob).await, "clear");
    }
    // Everything processed: the backlog only holds what is still undecided.
    let mut after = None;
    loop {
        let page = ok(
            life.gc_candidates(CandidateKind::Manifest, after.as_ref(), 2)
                .await,
            "page",
        );
        if page.is_empty() {
            break;
        }
        for c in &page {
            ok(
                life.collect_manifest(&c.repository, &c.digest, future, false)
                    .await,
                "drain",
            );
        }
        after = page.last().cloned();
    }
    let left = ok(
        life.gc_candidates(CandidateKind::Manifest, None, 100).await,
        "left",
    );
    assert!(left.is_empty(), "{left:?}");
}

/// Register a remote registry `name` (for suites whose rows reference one).
pub async fn add_test_registry(store: &dyn crate::RemoteStore, name: &'static str) {
    store
        .create_registry(&crate::RemoteRegistry {
            name: name.into(),
            url: format!("https://{name}.example:5000"),
            username: String::new(),
            secret_sealed: Vec::new(),
            ca_pem: String::new(),
            insecure: false,
            description: String::new(),
            created_at: 1,
            updated_at: 1,
        })
        .await
        .expect("create remote registry");
}

/// [`crate::ReplicationStore`]: rules (unique names, an existing remote registry), executions
/// with counts from their tasks, the stop flag, schedule slots claimed once, and a rule's
/// deletion taking its history with it. `add_registry` registers a remote registry named
/// by its argument in the same database (through `RemoteStore`).
pub async fn replication_suite<F, Fut>(store: &dyn crate::ReplicationStore, add_registry: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use crate::replication::{
        Direction, NameMapping, ReplicationRule, RuleTrigger, RunStatus, Task,
    };
    let rule = ReplicationRule {
        name: "to-prod".into(),
        direction: Direction::Push,
        registry: "prod".into(),
        repositories: "library/**".into(),
        tags: "v*".into(),
        labels: "tier=prod".into(),
        mapping: NameMapping::Replace {
            from: "library".into(),
            to: "mirror".into(),
        },
        trigger: RuleTrigger::OnPush,
        replicate_deletions: true,
        enabled: true,
        description: "d".into(),
        created_at: 10,
        updated_at: 10,
    };
    // The registry must exist.
    assert!(matches!(
        store.create_rule(&rule).await,
        Err(StorageError::NotFound(m)) if m.contains("prod")
    ));
    add_registry("prod").await;
    store.create_rule(&rule).await.expect("create rule");
    assert!(matches!(
        store.create_rule(&rule).await,
        Err(StorageError::AlreadyExists(_))
    ));
    let mut unknown = rule.clone();
    unknown.name = "other".into();
    unknown.registry = "nowhere".into();
    assert!(matches!(
        store.create_rule(&unknown).await,
        Err(StorageError::NotFound(m)) if m.contains("nowhere")
    ));
    assert_eq!(store.rule("to-prod").await.unwrap().as_ref(), Some(&rule));
    assert_eq!(store.rule("nope").await.unwrap(), None);
    let mut pull = rule.clone();
    pull.name = "from-prod".into();
    pull.direction = Direction::Pull;
    pull.trigger = RuleTrigger::Schedule("*/5 * * * *".into());
    pull.mapping = NameMapping::Flatten(1);
    store.create_rule(&pull).await.expect("create pull rule");
    let names: Vec<String> = store
        .list_rules()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["from-prod", "to-prod"]);
    let mut changed = rule.clone();
    changed.enabled = false;
    changed.tags = "**".into();
    changed.labels = "signed".into();
    changed.updated_at = 20;
    store.update_rule(&changed).await.expect("update");
    assert_eq!(store.rule("to-prod").await.unwrap(), Some(changed.clone()));
    let mut missing = rule.clone();
    missing.name = "missing".into();
    assert!(matches!(
        store.update_rule(&missing).await,
        Err(StorageError::NotFound(_))
    ));

    // Schedule slots: claimed once each, only forwards.
    assert!(store.claim_schedule_slot("from-prod", 300).await.unwrap());
    assert!(!store.claim_schedule_slot("from-prod", 300).await.unwrap());
    assert!(!store.claim_schedule_slot("from-prod", 200).await.unwrap());
    assert!(store.claim_schedule_slot("from-prod", 600).await.unwrap());
    assert!(!store.claim_schedule_slot("nope", 600).await.unwrap());

    // Executions and tasks.
    assert!(matches!(
        store.start_execution("nope", "manual", 1).await,
        Err(StorageError::NotFound(_))
    ));
    let e1 = store
        .start_execution("to-prod", "manual", 100)
        .await
        .unwrap();
    let e2 = store
        .start_execution("to-prod", "on-push", 101)
        .await
        .unwrap();
    assert!(e2 > e1);
    let task = |reference: &str, status: RunStatus, bytes: u64| Task {
        id: 0,
        execution: e1,
        operation: "copy".into(),
        source: "library/a".into(),
        destination: "mirror/a".into(),
        reference: reference.into(),
        digest: String::new(),
        status,
        bytes,
        error: String::new(),
        started_at: 100,
        ended_at: None,
    };
    let ids = store
        .add_tasks(&[
            task("v1", RunStatus::Running, 0),
            task("v2", RunStatus::Pending, 0),
            task("v3", RunStatus::Skipped, 0),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "ids in order: {ids:?}");
    let (t1, t2) = (ids[0], ids[1]);
    assert!(store.add_tasks(&[]).await.unwrap().is_empty());
    // A task of a missing execution: nothing of the batch is kept.
    let orphan = Task {
        execution: e2 + 1000,
        ..task("v9", RunStatus::Pending, 0)
    };
    assert!(matches!(
        store
            .add_tasks(&[task("v4", RunStatus::Pending, 0), orphan])
            .await,
        Err(StorageError::NotFound(_))
    ));
    store
        .update_task(t1, RunStatus::Succeeded, "sha256:aa", 1000, "", 110)
        .await
        .unwrap();
    store
        .update_task(t2, RunStatus::Failed, "", 24, "connection reset", 111)
        .await
        .unwrap();
    assert!(matches!(
        store
            .update_task(t2 + 1000, RunStatus::Failed, "", 0, "", 1)
            .await,
        Err(StorageError::NotFound(_))
    ));
    let tasks = store.tasks(e1, 100).await.unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0].id, t1);
    assert_eq!(tasks[0].status, RunStatus::Succeeded);
    assert_eq!(tasks[0].digest, "sha256:aa");
    assert_eq!(tasks[0].ended_at, Some(110));
    assert_eq!(tasks[1].error, "connection reset");
    assert_eq!(tasks[2].reference, "v3");
    assert_eq!(store.tasks(e1, 1).await.unwrap().len(), 1);
    assert_eq!(
        store.copied_sources("to-prod", 10).await.unwrap(),
        ["library/a"]
    );
    assert!(
        store
            .copied_sources("from-prod", 10)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(store.request_stop(e1).await.unwrap());
    let e = store.execution(e1).await.unwrap().expect("execution");
    assert!(e.stop_requested);
    assert_eq!(e.status, RunStatus::Running);
    assert_eq!(
        (e.tasks, e.succeeded, e.failed, e.skipped, e.bytes),
        (3, 1, 1, 1, 1024)
    );
    store
        .finish_execution(e1, RunStatus::Stopped, "stopped by admin", 120)
        .await
        .unwrap();
    // Final once.
    store
        .finish_execution(e1, RunStatus::Succeeded, "", 130)
        .await
        .unwrap();
    let e = store.execution(e1).await.unwrap().unwrap();
    assert_eq!(e.status, RunStatus::Stopped);
    assert_eq!(e.ended_at, Some(120));
    assert_eq!(e.message, "stopped by admin");
    assert!(!store.request_stop(e1).await.unwrap());
    assert!(matches!(
        store
            .finish_execution(e2 + 1000, RunStatus::Failed, "", 1)
            .await,
        Err(StorageError::NotFound(_))
    ));
    // Queued executions are claimed once, oldest first; a stopped one never runs.
    let q1 = store
        .queue_execution("to-prod", "manual", 150)
        .await
        .unwrap();
    let q2 = store
        .queue_execution("to-prod", "manual", 151)
        .await
        .unwrap();
    let q3 = store
        .queue_execution("to-prod", "manual", 152)
        .await
        .unwrap();
    assert!(store.request_stop(q2).await.unwrap());
    assert_eq!(
        store.execution(q2).await.unwrap().unwrap().status,
        RunStatus::Stopped
    );
    let c = store.claim_queued(160).await.unwrap().expect("claimed");
    assert_eq!(
        (c.id, c.status, c.started_at),
        (q1, RunStatus::Running, 160)
    );
    assert_eq!(
        store.claim_queued(161).await.unwrap().map(|e| e.id),
        Some(q3)
    );
    assert_eq!(store.claim_queued(162).await.unwrap(), None);
    for id in [q1, q3] {
        store
            .finish_execution(id, RunStatus::Succeeded, "", 170)
            .await
            .unwrap();
    }
    let all = store.list_executions(None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        [q3, q2, q1, e2, e1],
        "newest first"
    );
    assert_eq!(
        store.list_executions(Some("to-prod"), 1).await.unwrap()[0].id,
        q3
    );
    assert!(
        store
            .list_executions(Some("from-prod"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A process that died left e2 running.
    assert_eq!(
        store.fail_stale_executions(140, "restarted").await.unwrap(),
        1
    );
    let e = store.execution(e2).await.unwrap().unwrap();
    assert_eq!(
        (e.status, e.message.as_str()),
        (RunStatus::Failed, "restarted")
    );
    // Heartbeats: a running execution whose replica stopped beating is failed; one with a
    // fresh heartbeat is not (nor is one that finished).
    let dead = store
        .start_execution("to-prod", "manual", 200)
        .await
        .unwrap();
    let alive = store
        .start_execution("to-prod", "manual", 200)
        .await
        .unwrap();
    store.heartbeat_execution(alive, 300).await.unwrap();
    store.heartbeat_execution(dead, 220).await.unwrap();
    assert_eq!(
        store
            .fail_silent_executions(250, 310, "the replica stopped")
            .await
            .unwrap(),
        1
    );
    let e = store.execution(dead).await.unwrap().unwrap();
    assert_eq!(
        (e.status, e.message.as_str(), e.ended_at),
        (RunStatus::Failed, "the replica stopped", Some(310))
    );
    assert_eq!(
        store.execution(alive).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    // A heartbeat does not revive a finished execution.
    store.heartbeat_execution(dead, 400).await.unwrap();
    assert_eq!(
        store
            .fail_silent_executions(350, 410, "again")
            .await
            .unwrap(),
        1,
        "only `alive`, whose heartbeat is now old"
    );
    assert_eq!(
        store.execution(dead).await.unwrap().unwrap().message,
        "the replica stopped"
    );

    store.delete_rule("to-prod").await.expect("delete rule");
    assert_eq!(store.execution(e1).await.unwrap(), None);
    assert!(store.tasks(e1, 10).await.unwrap().is_empty());
    assert!(matches!(
        store.delete_rule("to-prod").await,
        Err(StorageError::NotFound(_))
    ));
    store.delete_rule("from-prod").await.unwrap();
    assert!(store.list_rules().await.unwrap().is_empty());
}
