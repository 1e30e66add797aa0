//! `berth serve` with its blobs in a real S3 server (Garage, single node on loopback):
//! skopeo pushes and pulls through it with blob GETs redirected to pre-signed URLs, and a
//! push survives the bucket going away and coming back (503 meanwhile, nothing corrupt
//! visible afterwards).

mod common;
mod fixtures;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::garage::{self, Garage};
use common::{Berth, need, run_cmd};

/// `berth serve` on `garage`'s bucket under `prefix`, with `redirect` as given.
async fn start_on(garage: &Garage, prefix: &str, redirect: bool) -> Berth {
    start_with_database(garage, prefix, redirect, None).await
}

/// As [`start_on`], with metadata in the PostgreSQL database `database_url` when given.
async fn start_with_database(
    garage: &Garage,
    prefix: &str,
    redirect: bool,
    database_url: Option<&str>,
) -> Berth {
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("berth.toml");
    let database = database_url
        .map(|url| format!("[database]\nurl = \"{url}\"\n\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        database
            + &format!(
                "[storage]\nbackend = \"s3\"\n\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
             bucket = \"{}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{}\"\n\
             secret_access_key = \"{}\"\nredirect = {redirect}\npresign_ttl_secs = 120\n",
                garage.endpoint(),
                garage::REGION,
                garage::BUCKET,
                garage::ACCESS_KEY,
                garage::SECRET_KEY,
            ),
    )
    .unwrap();
    // Garage creates its default key and bucket just after it listens; Berth refuses to
    // start on a bucket that does not answer, so retry the start briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bucket_answers(garage).await {
        assert!(
            Instant::now() < deadline,
            "Garage's bucket did not answer:\n{}",
            garage.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Berth::start_in(data, &["--config", config.to_str().unwrap()])
}

/// Whether Garage knows the default key and bucket yet (a signed listing succeeds).
async fn bucket_answers(garage: &Garage) -> bool {
    let config = berth_storage::s3::S3Config {
        endpoint: Some(garage.endpoint()),
        region: garage::REGION.to_owned(),
        bucket: garage::BUCKET.to_owned(),
        access_key_id: Some(garage::ACCESS_KEY.to_owned()),
        secret_access_key: Some(garage::SECRET_KEY.to_owned()),
        ..Default::default()
    };
    let store = berth_storage::s3::S3BlobStore::connect(&config).unwrap();
    store.check().await.is_ok()
}

fn skopeo(args: &[&str]) -> common::CmdOutput {
    need("skopeo");
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth_dir.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth_dir.path());
    run_cmd(&mut cmd, Duration::from_secs(180))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_and_redirected_pull() {
    let garage = Garage::shared();
    let reg = start_on(garage, "skopeo", true).await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert_dir = reg.cert_dir();
    let creds = common::admin_creds();
    let dest = format!("docker://{}/library/s3demo:v1", reg.host());
    skopeo(&[
        "copy",
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        s(&cert_dir),
        &layout.oci_ref(),
        &dest,
    ])
    .ok();

    // A blob GET answers 307 to a pre-signed URL on the bucket; HEAD stays local.
    let layer = layout.layer_digests()[0].clone();
    let client = reg.client();
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&reg.ca_pem()).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/v2/library/s3demo/blobs/{layer}", reg.url());
    let resp = no_follow
        .get(&url)
        .header(
            "authorization",
            common::basic_auth("admin", common::ADMIN_PASSWORD),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307, "{:?}", resp.headers());
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&garage.endpoint()) && location.contains("X-Amz-Signature"),
        "{location}"
    );
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let direct = reqwest::get(&location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        direct[..] == layout.blob(&layer)[..],
        "pre-signed URL bytes differ"
    );

    // skopeo follows the redirects and gets every digest back.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-cert-dir",
        s(&cert_dir),
        &dest,
        &format!("oci:{}:v1", s(&out)),
    ])
    .ok();
    for digest in layout.all_blob_digests() {
        assert_eq!(
            fixtures::read_blob(&out, &digest),
            layout.blob(&digest),
            "{digest} differs after the redirected pull"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_outage_during_push_is_503_then_resumes() {
    bucket_outage_scenario(None).await;
}

/// The same outage with the metadata in PostgreSQL (the scaled-out deployment): the
/// database stays up, the bucket goes; readiness names the bucket, not the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_outage_with_postgres_metadata_is_503_then_resumes() {
    let url = berth_storage::pg_fixture::PgCluster::shared()
        .database()
        .await;
    bucket_outage_scenario(Some(&url)).await;
}

async fn bucket_outage_scenario(database_url: Option<&str>) {
    let mut garage = Garage::start();
    let reg = start_with_database(&garage, "outage", false, database_url).await;
    let client = reg.client();
    let base = format!("{}/v2/library/outage", reg.url());
    let blob: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = fixtures::sha256_digest(&blob);
    let cut = 6 * 1024 * 1024;

    let resp = client
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let upload = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", reg.url())
    };
    let resp = client
        .patch(&upload)
        .header("content-range", format!("0-{}", cut - 1))
        .header("content-type", "application/octet-stream")
        .body(blob[..cut].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.headers());
    let upload = match resp.headers().get("location") {
        Some(l) if l.to_str().unwrap().starts_with("http") => l.to_str().unwrap().to_owned(),
        Some(l) => format!("{}{}", reg.url(), l.to_str().unwrap()),
        None => upload,
    };

    // The bucket goes away: the next PATCH and a fresh monolithic push fail fast with 503
    // naming the object store.
    garage.stop();
    let started = Instant::now();
    let resp = client
        .patch(&upload)
        .header("content-range", format!("{cut}-{}", blob.len() - 1))
        .header("content-type", "application/octet-stream")
        .body(blob[cut..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(text.contains("object store"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let resp = client
        .post(format!("{base}/blobs/uploads/?digest={digest}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    // Readiness follows the bucket (liveness does not).
    let ready = client
        .get(format!("{}/readyz", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let text = ready.text().await.unwrap();
    assert!(text.contains("bucket"), "{text}");
    let checks: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(checks["checks"]["database"]["ok"], true, "{text}");
    let live = client
        .get(format!("{}/healthz", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // It comes back: the upload resumes where the last acknowledged PATCH ended.
    garage.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let resp = client.get(&upload).send().await.unwrap();
        if resp.status() == 204 || Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.status(), 204);
    assert_eq!(
        status.headers()["range"].to_str().unwrap(),
        format!("0-{}", cut - 1)
    );
    let ready = client
        .get(format!("{}/readyz", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    // Nothing of the failed pushes is visible.
    let head = client
        .head(format!("{base}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
    let resp = client
        .patch(&upload)
        .header("content-range", format!("{cut}-{}", blob.len() - 1))
        .header("content-type", "application/octet-stream")
        .body(blob[cut..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.headers());
    let upload = match resp.headers().get("location") {
        Some(l) if l.to_str().unwrap().starts_with("http") => l.to_str().unwrap().to_owned(),
        Some(l) => format!("{}{}", reg.url(), l.to_str().unwrap()),
        None => upload,
    };
    let sep = if upload.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("{upload}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let got = client
        .get(format!("{base}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap()[..] == blob[..], "blob differs");
}
