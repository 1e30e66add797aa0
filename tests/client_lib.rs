//! The `berth-client` library API the fetcher uses, against the real Berth: resolve with
//! platform selection, blob downloads resumed with `Range`, digest verification that deletes
//! a bad file, verified streams, and token auth from a keyring.

mod common;
mod fixtures;

use std::collections::BTreeMap;

use berth_client::copy::{Location, Platforms};
use berth_client::creds::AuthEntry;
use berth_client::image::Platform;
use berth_client::{
    ClientError, ClientOptions, Descriptor, ImageRef, Keyring, RegistryClient, TrustOptions,
};
use common::{ADMIN_PASSWORD, ADMIN_USER, Berth};
use futures_util::StreamExt;

fn client(reg: &Berth, admin: bool) -> RegistryClient {
    let mut trust = TrustOptions::isolated();
    trust.add_ca_pem(&reg.ca_pem(), "test CA").unwrap();
    let mut keyring = Keyring::new();
    if admin {
        keyring.add_auths(
            BTreeMap::from([(reg.host(), AuthEntry::basic(ADMIN_USER, ADMIN_PASSWORD))]),
            "test secret",
        );
    }
    RegistryClient::new(ClientOptions {
        trust,
        keyring,
        ..ClientOptions::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_resume_and_verify() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::multi_arch_layout(&tmp.path().join("src"), "m1");
    let image = ImageRef::parse(&format!("{}/library/multi:m1", reg.host())).unwrap();

    // Anonymous push is refused with a message naming what is missing.
    let anon = client(&reg, false);
    let err = berth_client::copy(
        &anon,
        &Location::Layout {
            dir: layout.path.clone(),
            tag: Some("m1".into()),
        },
        &Location::Registry(image.clone()),
        &Platforms::All,
    )
    .await
    .unwrap_err();
    // (401 or 403, depending on how the registry refuses anonymous pushes.)
    assert!(matches!(err, ClientError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("berth login"), "{err}");
    assert!(err.to_string().contains("push to library/multi"), "{err}");

    let c = client(&reg, true);
    let report = berth_client::copy(
        &c,
        &Location::Layout {
            dir: layout.path.clone(),
            tag: Some("m1".into()),
        },
        &Location::Registry(image.clone()),
        &Platforms::All,
    )
    .await
    .unwrap();
    assert_eq!(report.digest.to_string(), layout.manifest_digest());

    // Platform selection from the index (anonymous pull of the public project).
    let r = anon
        .resolve(&image, &Platform::parse("linux/arm64").unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.index.as_ref().unwrap().digest.to_string(),
        layout.manifest_digest()
    );
    assert_eq!(r.manifest.digest.to_string(), multi_digest(&layout, 1));
    assert_eq!(r.layers.len(), 3);
    let err = anon
        .resolve(&image, &Platform::parse("windows/amd64").unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");

    // Config in memory.
    let cfg = anon
        .fetch_blob_bytes(&image, &r.config, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        cfg.as_ref(),
        layout.blob(&r.config.digest.to_string()).as_slice()
    );

    // Resume: half of the layer already on disk.
    let layer = r.layers[0].clone();
    let full = layout.blob(&layer.digest.to_string());
    let dest = tmp.path().join("layer.part");
    std::fs::write(&dest, &full[..full.len() / 2]).unwrap();
    anon.fetch_blob_to_file(&image, &layer, &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), full);
    // Already complete: verified, nothing to download.
    anon.fetch_blob_to_file(&image, &layer, &dest)
        .await
        .unwrap();

    // A wrong prefix: digest mismatch, file removed.
    let mut bad = full[..full.len() / 2].to_vec();
    bad[0] ^= 0xff;
    std::fs::write(&dest, &bad).unwrap();
    let err = anon
        .fetch_blob_to_file(&image, &layer, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Integrity(_)), "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!dest.exists());

    // A descriptor that lies about the size: the verified stream fails at the end.
    let liar = Descriptor::new(&layer.media_type, layer.digest.clone(), layer.size + 1);
    let mut s = anon.blob_stream(&image, &liar).await.unwrap();
    let mut failed = None;
    while let Some(item) = s.next().await {
        if let Err(e) = item {
            failed = Some(e);
        }
    }
    let e = failed.expect("size mismatch must fail the stream");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

fn multi_digest(layout: &fixtures::Layout, i: usize) -> String {
    layout.images[i].manifest.digest.clone()
}
