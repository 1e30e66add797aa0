//! Black-box tests of the registry HTTP API, written from the OCI Distribution
//! Specification v1.1 (spec.md) and the Docker Registry HTTP API V2 document
//! (Docker-era headers and quirks). Each test starts its own `berth serve`.
//!
//! Set `BERTH_TEST_SERVER_BIN` to run the suite against another server with the
//! same CLI (used to sanity-check the tests against a reference registry).

mod common;

use common::{Berth, server_bin};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

const SBOM_TYPE: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG_TYPE: &str = "application/vnd.example.signature.config.v1+json";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A running registry plus a client for it.
struct Reg {
    srv: Berth,
    http: reqwest::Client,
    base: String,
}

/// A fully-read response.
#[derive(Debug)]
struct Resp {
    method: Method,
    url: String,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v: &HeaderValue| v.to_str().expect("ascii header"))
    }

    /// A header that must be present.
    fn must(&self, name: &str) -> &str {
        self.h(name).unwrap_or_else(|| {
            panic!(
                "{}: missing `{name}` header; headers: {:?}",
                self.what(),
                self.headers
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{}: body is not JSON ({e}): {:?}", self.what(), self.text())
        })
    }

    fn what(&self) -> String {
        format!("{} {} -> {}", self.method, self.url, self.status)
    }

    /// Assert the status, printing the body on mismatch.
    fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status,
            status,
            "{}: expected {status}; headers {:?}; body {:?}",
            self.what(),
            self.headers,
            self.text()
        );
        self
    }

    fn content_type(&self) -> &str {
        self.must("content-type")
    }

    /// Assert an OCI error response: one of `statuses`, `Content-Type: application/json`,
    /// body `{"errors":[{"code":..,"message":..}, ..]}` with every code well-formed and
    /// at least one code in `codes`. Returns the first code.
    fn expect_error(&self, statuses: &[u16], codes: &[&str]) -> String {
        assert!(
            statuses.contains(&self.status),
            "{}: expected status in {statuses:?}; body {:?}",
            self.what(),
            self.text()
        );
        assert!(
            self.content_type().starts_with("application/json"),
            "{}: error Content-Type is {:?}, want application/json; body {:?}",
            self.what(),
            self.content_type(),
            self.text()
        );
        let v = self.json();
        let errors = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no `errors` array in {v}", self.what()));
        assert!(!errors.is_empty(), "{}: empty `errors` array", self.what());
        for e in errors {
            let code = e["code"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: error without string `code`: {e}", self.what()));
            assert!(
                !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{}: malformed error code {code:?}",
                self.what()
            );
            assert!(
                e["message"].is_string(),
                "{}: error without string `message`: {e}",
                self.what()
            );
        }
        let got: Vec<&str> = errors.iter().map(|e| e["code"].as_str().unwrap()).collect();
        assert!(
            got.iter().any(|c| codes.contains(c)),
            "{}: error codes {got:?}, want one of {codes:?}; body {v}",
            self.what()
        );
        got[0].to_string()
    }
}

fn start() -> Reg {
    Reg::on(tempfile::tempdir().expect("tempdir"))
}

impl Reg {
    fn on(data: tempfile::TempDir) -> Reg {
        let srv = Berth::start_bin_in(&server_bin(), data, &[]);
        let http = srv.client();
        let base = srv.url();
        Reg { srv, http, base }
    }

    /// SIGKILL the server and start a new one on the same data directory.
    fn crash_and_restart(self) -> Reg {
        let data = self.srv.kill();
        Reg::on(data)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resolve a `Location` header as a client does: absolute URLs as they are, paths
    /// against the server, and anything else relative to `request_url`.
    fn resolve(&self, request_url: &str, loc: &str) -> String {
        let base = reqwest::Url::parse(request_url).expect("request url");
        base.join(loc).expect("resolvable Location").to_string()
    }

    /// Rebase a URL (possibly pointing to a previous incarnation of the server, with a
    /// different port) onto this server, keeping path and query.
    fn rebase(&self, url: &str) -> String {
        let u = reqwest::Url::parse(url).expect("url");
        let mut s = self.url(u.path());
        if let Some(q) = u.query() {
            s.push('?');
            s.push_str(q);
        }
        s
    }

    fn req(&self, m: Method, path: &str) -> RequestBuilder {
        self.http.request(m, self.url(path))
    }

    fn req_url(&self, m: Method, url: &str) -> RequestBuilder {
        self.http.request(m, url)
    }

    async fn go(&self, rb: RequestBuilder) -> Resp {
        let req = rb.build().expect("build request");
        let method = req.method().clone();
        let url = req.url().to_string();
        let r = self
            .http
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: request failed: {e:?}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r
            .bytes()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {url} -> {status}: reading body failed: {e:?}; headers {headers:?}"
                )
            })
            .to_vec();
        Resp {
            method,
            url,
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Resp {
        self.go(self.req(Method::GET, path)).await
    }

    async fn head(&self, path: &str) -> Resp {
        self.go(self.req(Method::HEAD, path)).await
    }

    /// Start an upload session; returns (absolute upload URL, response).
    async fn start_upload(&self, repo: &str) -> (String, Resp) {
        let r = self
            .go(self
                .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .body(Vec::new()))
            .await;
        r.expect(202);
        let loc = self.resolve(&r.url, r.must("location"));
        (loc, r)
    }

    /// Monolithic POST + PUT; asserts success and returns the digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha(data);
        let (loc, _) = self.start_upload(repo).await;
        let r = self
            .go(self
                .req_url(Method::PUT, &with_digest(&loc, &d))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec()))
            .await;
        r.expect(201);
        assert_eq!(r.must("docker-content-digest"), d, "{}", r.what());
        d
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.go(self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec()))
            .await
    }

    /// PUT a manifest and assert 201 + `Docker-Content-Digest`; returns its digest.
    async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self.put_manifest(repo, reference, media_type, body).await;
        r.expect(201);
        let d = sha(body);
        assert_eq!(r.must("docker-content-digest"), d, "{}", r.what());
        assert!(r.h("location").is_some(), "{}: no Location", r.what());
        d
    }

    async fn get_manifest(&self, repo: &str, reference: &str) -> Resp {
        self.go(self
            .req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header("accept", ACCEPT_ALL))
            .await
    }

    /// Push a config blob and one layer, then an OCI image manifest under `reference`.
    /// Returns (manifest bytes, manifest digest, [config digest, layer digest]).
    async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        seed: &str,
    ) -> (Vec<u8>, String, Vec<String>) {
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}")
            .into_bytes();
        let layer = blob_bytes(seed, 3000);
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        let m = oci_manifest(
            &cd,
            config.len(),
            &[(&ld, layer.len())],
            json!({"seed": seed}),
        );
        let md = self.push_manifest(repo, reference, OCI_MANIFEST, &m).await;
        (m, md, vec![cd, ld])
    }
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes.
fn blob_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut h = Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < len {
        out.extend_from_slice(&h);
        h = Sha256::digest(&h).to_vec();
    }
    out.truncate(len);
    out
}

/// Append `digest=<d>` to an upload URL, keeping any query parameters it already has.
fn with_digest(loc: &str, d: &str) -> String {
    let mut u = reqwest::Url::parse(loc).expect("upload url");
    u.query_pairs_mut().append_pair("digest", d);
    u.to_string()
}

/// Pretty-printed (so that re-serialisation by the server would be detected).
fn oci_manifest(
    config: &str,
    config_size: usize,
    layers: &[(&str, usize)],
    annotations: Value,
) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(d, s)| json!({"mediaType": OCI_LAYER, "digest": d, "size": s}))
        .collect();
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
        "layers": layers,
        "annotations": annotations,
    }))
    .unwrap()
}

/// The `Range` header of an upload response: `0-<last byte>`.
fn upload_range(n: usize) -> String {
    format!("0-{}", n - 1)
}

/// The target of a `Link: <url>; rel="next"` header, if any.
fn next_link(r: &Resp) -> Option<String> {
    let link = r.h("link")?;
    assert!(
        link.contains("rel=\"next\""),
        "{}: Link without rel=\"next\": {link}",
        r.what()
    );
    let start = link.find('<').expect("Link <") + 1;
    let end = link.find('>').expect("Link >");
    Some(link[start..end].to_string())
}

fn str_list(v: &Value, what: &str) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("string").to_string())
            .collect(),
        _ => panic!("{what}: not a list: {v}"),
    }
}

// ---------------------------------------------------------------------------
// Base
// ---------------------------------------------------------------------------

#[tokio::test]
async fn api_version_check() {
    let reg = start();
    let r = reg.get("/v2/").await;
    r.expect(200);
    assert_eq!(r.must("docker-distribution-api-version"), "registry/2.0");
    // HEAD works too (Docker probes with GET, others with HEAD).
    let r = reg.head("/v2/").await;
    r.expect(200);
    assert_eq!(r.must("docker-distribution-api-version"), "registry/2.0");
}

// ---------------------------------------------------------------------------
// Blob uploads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn monolithic_post_then_put() {
    let reg = start();
    let data = blob_bytes("mono", 1 << 20);
    let d = sha(&data);

    let (loc, post) = reg.start_upload("lib/mono").await;
    let uuid = post.must("docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert!(
        loc.contains(uuid),
        "Location {loc} should contain the session id {uuid}"
    );
    if let Some(range) = post.h("range") {
        assert_eq!(range, "0-0", "fresh session Range");
    }

    // Content-Type is octet-stream; digest given raw (unencoded) as Docker does.
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = reg
        .go(reg
            .req_url(Method::PUT, &format!("{loc}{sep}digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(data.clone()))
        .await;
    put.expect(201);
    assert_eq!(put.must("docker-content-digest"), d);
    let blob_url = reg.resolve(&put.url, put.must("location"));
    assert!(
        blob_url.contains(&format!("/v2/lib/mono/blobs/{d}")),
        "blob Location {blob_url}"
    );

    // The Location is pullable.
    let got = reg.go(reg.req_url(Method::GET, &blob_url)).await;
    got.expect(200);
    assert_eq!(got.body.len(), data.len());
    assert!(got.body == data, "blob bytes differ");
    assert_eq!(got.must("docker-content-digest"), d);

    // The session is gone once completed.
    let r = reg.go(reg.req_url(Method::GET, &loc)).await;
    r.expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"]);
}

#[tokio::test]
async fn single_post_upload() {
    let reg = start();
    let data = blob_bytes("single", 70_000);
    let d = sha(&data);
    let r = reg
        .go(reg
            .req(
                Method::POST,
                &format!("/v2/single/blobs/uploads/?digest={d}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.clone()))
        .await;
    r.expect(201);
    assert_eq!(r.must("docker-content-digest"), d);
    let blob_url = reg.resolve(&r.url, r.must("location"));
    let got = reg.go(reg.req_url(Method::GET, &blob_url)).await;
    got.expect(200);
    assert!(got.body == data);

    // Digest mismatch on the single POST: 400 DIGEST_INVALID and nothing stored.
    let other = blob_bytes("single-other", 500);
    let wrong = sha(b"not the content");
    let r = reg
        .go(reg
            .req(
                Method::POST,
                &format!("/v2/single/blobs/uploads/?digest={wrong}"),
            )
            .header("content-type", "application/octet-stream")
            .body(other.clone()))
        .await;
    r.expect_error(&[400], &["DIGEST_INVALID"]);
    reg.head(&format!("/v2/single/blobs/{wrong}"))
        .await
        .expect(404);
    reg.head(&format!("/v2/single/blobs/{}", sha(&other)))
        .await
        .expect(404);
}

#[tokio::test]
async fn chunked_upload_with_content_range() {
    let reg = start();
    let data = blob_bytes("chunked", 3200);
    let (c1, rest) = data.split_at(1000);
    let (c2, c3) = rest.split_at(1500);
    let d = sha(&data);

    let (loc, post) = reg.start_upload("chunk/repo").await;
    let uuid = post.must("docker-upload-uuid").to_string();

    let p1 = reg
        .go(reg
            .req_url(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", "0-999")
            .body(c1.to_vec()))
        .await;
    p1.expect(202);
    assert_eq!(p1.must("range"), "0-999");
    assert_eq!(p1.must("docker-upload-uuid"), uuid);
    let loc = reg.resolve(&p1.url, p1.must("location"));

    // Status of the session.
    let st = reg.go(reg.req_url(Method::GET, &loc)).await;
    st.expect(204);
    assert_eq!(st.must("range"), "0-999");
    assert!(
        st.h("location").is_some(),
        "GET on session must return Location"
    );
    assert_eq!(st.must("docker-upload-uuid"), uuid);
    assert!(st.body.is_empty());

    // Out-of-order chunks: a gap, and an overlap. Both 416; the session is unchanged.
    for bad in ["2000-2499", "0-499", "500-1499"] {
        let body_len = {
            let (a, b) = bad.split_once('-').unwrap();
            b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1
        };
        let r = reg
            .go(reg
                .req_url(Method::PATCH, &loc)
                .header("content-type", "application/octet-stream")
                .header("content-range", bad)
                .body(vec![b'x'; body_len]))
            .await;
        assert_eq!(
            r.status,
            416,
            "PATCH Content-Range {bad} after 0-999: {} {}",
            r.status,
            r.text()
        );
    }
    let st = reg.go(reg.req_url(Method::GET, &loc)).await;
    st.expect(204);
    assert_eq!(
        st.must("range"),
        "0-999",
        "a rejected chunk must not change the session"
    );
    let loc = reg.resolve(&st.url, st.must("location"));

    let p2 = reg
        .go(reg
            .req_url(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", "1000-2499")
            .body(c2.to_vec()))
        .await;
    p2.expect(202);
    assert_eq!(p2.must("range"), "0-2499");
    let loc = reg.resolve(&p2.url, p2.must("location"));

    // Final chunk in the closing PUT; the digest is of the whole blob.
    let put = reg
        .go(reg
            .req_url(Method::PUT, &with_digest(&loc, &d))
            .header("content-type", "application/octet-stream")
            .header("content-range", "2500-3199")
            .body(c3.to_vec()))
        .await;
    put.expect(201);
    assert_eq!(put.must("docker-content-digest"), d);
    let blob_url = reg.resolve(&put.url, put.must("location"));
    let got = reg.go(reg.req_url(Method::GET, &blob_url)).await;
    got.expect(200);
    assert!(got.body == data, "reassembled blob differs");
    assert_eq!(got.must("content-length"), "3200");
}

/// Docker streams PATCH bodies without `Content-Range` and closes with an empty PUT.
#[tokio::test]
async fn chunked_upload_docker_style_without_content_range() {
    let reg = start();
    let data = blob_bytes("docker-style", 5000);
    let d = sha(&data);
    let (mut loc, _) = reg.start_upload("docker/style").await;
    let mut sent = 0;
    for chunk in data.chunks(2048) {
        let r = reg
            .go(reg
                .req_url(Method::PATCH, &loc)
                .header("content-type", "application/octet-stream")
                .body(chunk.to_vec()))
            .await;
        r.expect(202);
        sent += chunk.len();
        assert_eq!(r.must("range"), upload_range(sent));
        loc = reg.resolve(&r.url, r.must("location"));
    }
    let put = reg
        .go(reg.req_url(Method::PUT, &with_digest(&loc, &d)))
        .await;
    put.expect(201);
    assert_eq!(put.must("docker-content-digest"), d);
    let got = reg.get(&format!("/v2/docker/style/blobs/{d}")).await;
    got.expect(200);
    assert!(got.body == data);
}

#[tokio::test]
async fn cancel_upload_and_unknown_sessions() {
    let reg = start();
    let (loc, _) = reg.start_upload("cancel/me").await;
    let p = reg
        .go(reg
            .req_url(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", "0-9")
            .body(b"0123456789".to_vec()))
        .await;
    p.expect(202);
    let loc = reg.resolve(&p.url, p.must("location"));

    // The session is scoped to its repository.
    let path = reqwest::Url::parse(&loc).unwrap().path().to_string();
    let other = path.replacen("/v2/cancel/me/", "/v2/cancel/other/", 1);
    assert_ne!(
        path, other,
        "upload URL {path} should live under /v2/cancel/me/"
    );
    reg.get(&other)
        .await
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"]);

    let del = reg.go(reg.req_url(Method::DELETE, &loc)).await;
    del.expect(204);

    reg.go(reg.req_url(Method::GET, &loc))
        .await
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"]);
    reg.go(reg
        .req_url(Method::PATCH, &loc)
        .header("content-range", "10-19")
        .body(b"abcdefghij".to_vec()))
        .await
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"]);
    reg.go(reg.req_url(Method::PUT, &with_digest(&loc, &sha(b"0123456789"))))
        .await
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"]);
    reg.go(reg.req_url(Method::DELETE, &loc))
        .await
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"]);
    // Nothing was committed.
    reg.head(&format!("/v2/cancel/me/blobs/{}", sha(b"0123456789")))
        .await
        .expect(404);

    // Sessions that never existed.
    for id in ["7d3bd3a2-3b8a-4a41-9b8e-1b3c44c9f3a1", "not-a-uuid"] {
        reg.get(&format!("/v2/cancel/me/blobs/uploads/{id}"))
            .await
            .expect_error(&[400, 404], &["BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"]);
    }
    // A traversal attempt as session id: any clean client error.
    reg.get("/v2/cancel/me/blobs/uploads/..%2f..%2fetc")
        .await
        .expect_error(
            &[400, 404],
            &[
                "BLOB_UPLOAD_UNKNOWN",
                "BLOB_UPLOAD_INVALID",
                "NAME_UNKNOWN",
                "NAME_INVALID",
            ],
        );
}

#[tokio::test]
async fn digest_mismatch_and_malformed_digests() {
    let reg = start();
    let data = blob_bytes("mismatch", 4096);
    let actual = sha(&data);
    let claimed = sha(b"something else entirely");

    let (loc, _) = reg.start_upload("dig/repo").await;
    let r = reg
        .go(reg
            .req_url(Method::PUT, &with_digest(&loc, &claimed))
            .header("content-type", "application/octet-stream")
            .body(data.clone()))
        .await;
    r.expect_error(&[400], &["DIGEST_INVALID"]);
    reg.head(&format!("/v2/dig/repo/blobs/{claimed}"))
        .await
        .expect(404);
    reg.head(&format!("/v2/dig/repo/blobs/{actual}"))
        .await
        .expect(404);
    reg.get(&format!("/v2/dig/repo/blobs/{claimed}"))
        .await
        .expect_error(&[404], &["BLOB_UNKNOWN"]);

    // Chunked upload whose closing digest does not match.
    let (loc, _) = reg.start_upload("dig/repo").await;
    let p = reg
        .go(reg
            .req_url(Method::PATCH, &loc)
            .header("content-range", format!("0-{}", data.len() - 1))
            .body(data.clone()))
        .await;
    p.expect(202);
    let loc = reg.resolve(&p.url, p.must("location"));
    reg.go(reg.req_url(Method::PUT, &with_digest(&loc, &claimed)))
        .await
        .expect_error(&[400], &["DIGEST_INVALID"]);
    reg.head(&format!("/v2/dig/repo/blobs/{actual}"))
        .await
        .expect(404);

    // Malformed digests on the closing PUT.
    let bad_digests = [
        "sha256:zzzz",
        "sha256:abc",
        "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
        "notadigest",
        "sha256",
        ":",
    ];
    for bad in bad_digests {
        let (loc, _) = reg.start_upload("dig/repo").await;
        let r = reg
            .go(reg
                .req_url(Method::PUT, &with_digest(&loc, bad))
                .header("content-type", "application/octet-stream")
                .body(data.clone()))
            .await;
        r.expect_error(&[400], &["DIGEST_INVALID"]);
    }
    // No digest at all.
    let (loc, _) = reg.start_upload("dig/repo").await;
    reg.go(reg.req_url(Method::PUT, &loc).body(data.clone()))
        .await
        .expect_error(&[400], &["DIGEST_INVALID", "BLOB_UPLOAD_INVALID"]);
    // Unsupported algorithm.
    let (loc, _) = reg.start_upload("dig/repo").await;
    reg.go(reg
        .req_url(
            Method::PUT,
            &with_digest(&loc, "md5:0123456789abcdef0123456789abcdef"),
        )
        .body(data.clone()))
        .await
        .expect_error(&[400], &["DIGEST_INVALID", "UNSUPPORTED"]);
    reg.head(&format!("/v2/dig/repo/blobs/{actual}"))
        .await
        .expect(404);

    // Malformed digests in blob URLs.
    for bad in ["sha256:zzzz", "notadigest", "sha256:abc"] {
        let r = reg.get(&format!("/v2/dig/repo/blobs/{bad}")).await;
        r.expect_error(&[400, 404], &["DIGEST_INVALID", "BLOB_UNKNOWN"]);
    }
}

#[tokio::test]
async fn upload_resumes_after_server_restart() {
    let reg = start();
    let data = blob_bytes("resume", 300_000);
    let d = sha(&data);
    let (first, second) = data.split_at(123_456);

    let (loc, post) = reg.start_upload("resume/app").await;
    let uuid = post.must("docker-upload-uuid").to_string();
    let p = reg
        .go(reg
            .req_url(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", first.len() - 1))
            .body(first.to_vec()))
        .await;
    p.expect(202);
    assert_eq!(p.must("range"), upload_range(first.len()));
    let loc = reg.resolve(&p.url, p.must("location"));

    let reg = reg.crash_and_restart();
    let loc = reg.rebase(&loc);
    let st = reg.go(reg.req_url(Method::GET, &loc)).await;
    st.expect(204);
    assert_eq!(
        st.must("range"),
        upload_range(first.len()),
        "acknowledged chunk lost across restart"
    );
    assert_eq!(st.must("docker-upload-uuid"), uuid);
    let loc = reg.resolve(&st.url, st.must("location"));

    let p = reg
        .go(reg
            .req_url(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{}-{}", first.len(), data.len() - 1),
            )
            .body(second.to_vec()))
        .await;
    p.expect(202);
    assert_eq!(p.must("range"), upload_range(data.len()));
    let loc = reg.resolve(&p.url, p.must("location"));
    let put = reg
        .go(reg.req_url(Method::PUT, &with_digest(&loc, &d)))
        .await;
    put.expect(201);
    assert_eq!(put.must("docker-content-digest"), d);
    let got = reg.get(&format!("/v2/resume/app/blobs/{d}")).await;
    got.expect(200);
    assert!(got.body == data, "resumed blob differs");
}

#[tokio::test]
async fn cross_repo_mount() {
    let reg = start();
    let data = blob_bytes("mount", 10_000);
    let d = reg.push_blob("src/a", &data).await;
    // Another repository, holding something else.
    reg.push_blob("src/empty", b"unrelated").await;

    // Not visible from another repository before the mount.
    reg.get(&format!("/v2/dst/b/blobs/{d}"))
        .await
        .expect_error(&[404], &["BLOB_UNKNOWN"]);

    let r = reg
        .go(reg.req(
            Method::POST,
            &format!("/v2/dst/b/blobs/uploads/?mount={d}&from=src/a"),
        ))
        .await;
    r.expect(201);
    assert_eq!(r.must("docker-content-digest"), d);
    let blob_url = reg.resolve(&r.url, r.must("location"));
    assert!(
        blob_url.contains(&format!("/v2/dst/b/blobs/{d}")),
        "mount Location {blob_url}"
    );
    let got = reg.go(reg.req_url(Method::GET, &blob_url)).await;
    got.expect(200);
    assert!(got.body == data);

    // Mounting from a repository that does not hold the blob starts an ordinary session.
    let r = reg
        .go(reg.req(
            Method::POST,
            &format!("/v2/dst/c/blobs/uploads/?mount={d}&from=src/empty"),
        ))
        .await;
    r.expect(202);
    assert!(r.h("docker-upload-uuid").is_some());
    let loc = reg.resolve(&r.url, r.must("location"));
    let put = reg
        .go(reg
            .req_url(Method::PUT, &with_digest(&loc, &d))
            .header("content-type", "application/octet-stream")
            .body(data.clone()))
        .await;
    put.expect(201);
    assert_eq!(put.must("docker-content-digest"), d);
    reg.get(&format!("/v2/dst/c/blobs/{d}")).await.expect(200);

    // Mount of a digest that exists nowhere: 202 too.
    let ghost = sha(b"ghost");
    let r = reg
        .go(reg.req(
            Method::POST,
            &format!("/v2/dst/d/blobs/uploads/?mount={ghost}&from=src/a"),
        ))
        .await;
    r.expect(202);
    assert!(r.h("location").is_some());

    // Mount without `from`, when the blob exists in the registry: 201.
    let r = reg
        .go(reg.req(Method::POST, &format!("/v2/dst/e/blobs/uploads/?mount={d}")))
        .await;
    r.expect(201);
    assert_eq!(r.must("docker-content-digest"), d);
    let got = reg.get(&format!("/v2/dst/e/blobs/{d}")).await;
    got.expect(200);
    assert!(got.body == data);
}

// ---------------------------------------------------------------------------
// Blob reads and deletes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn blob_get_head_range_delete() {
    let reg = start();
    let data = blob_bytes("ranges", 100);
    let d = reg.push_blob("blobs/r", &data).await;
    let path = format!("/v2/blobs/r/blobs/{d}");

    let g = reg.get(&path).await;
    g.expect(200);
    assert_eq!(g.must("content-length"), "100");
    assert_eq!(g.must("docker-content-digest"), d);
    assert!(g.body == data);

    let h = reg.head(&path).await;
    h.expect(200);
    assert_eq!(h.must("content-length"), "100");
    assert_eq!(h.must("docker-content-digest"), d);
    assert!(h.body.is_empty());

    // Ranges (resumable pull).
    let cases: [(&str, usize, usize); 5] = [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=90-", 90, 99),
        ("bytes=-5", 95, 99),
        ("bytes=95-200", 95, 99),
    ];
    for (range, a, b) in cases {
        let r = reg
            .go(reg.req(Method::GET, &path).header("range", range))
            .await;
        assert_eq!(r.status, 206, "GET {path} Range: {range}: {}", r.status);
        assert_eq!(
            r.must("content-range"),
            format!("bytes {a}-{b}/100"),
            "Range: {range}"
        );
        assert_eq!(
            r.must("content-length"),
            (b - a + 1).to_string(),
            "Range: {range}"
        );
        assert!(r.body == data[a..=b], "Range: {range}: wrong bytes");
    }
    for range in ["bytes=100-200", "bytes=500-"] {
        let r = reg
            .go(reg.req(Method::GET, &path).header("range", range))
            .await;
        assert_eq!(r.status, 416, "GET {path} Range: {range}: {}", r.status);
        if let Some(cr) = r.h("content-range") {
            assert_eq!(cr, "bytes */100", "416 Content-Range");
        }
    }

    // Unknown blobs.
    let unknown = sha(b"unknown");
    reg.get(&format!("/v2/blobs/r/blobs/{unknown}"))
        .await
        .expect_error(&[404], &["BLOB_UNKNOWN"]);
    let h = reg.head(&format!("/v2/blobs/r/blobs/{unknown}")).await;
    h.expect(404);
    assert!(h.body.is_empty());

    // Delete.
    let del = reg.go(reg.req(Method::DELETE, &path)).await;
    del.expect(202);
    reg.get(&path).await.expect_error(&[404], &["BLOB_UNKNOWN"]);
    reg.head(&path).await.expect(404);
    reg.go(reg.req(Method::DELETE, &path))
        .await
        .expect_error(&[404], &["BLOB_UNKNOWN"]);
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oci_manifest_put_get_head() {
    let reg = start();
    let (m, md, _) = reg.push_image("img/app", "v1", "oci-1").await;

    // Location of the PUT is pullable (push_image checked status and digest).
    let put = reg.put_manifest("img/app", "v1", OCI_MANIFEST, &m).await;
    put.expect(201);
    let murl = reg.resolve(&put.url, put.must("location"));
    let g = reg
        .go(reg
            .req_url(Method::GET, &murl)
            .header("accept", OCI_MANIFEST))
        .await;
    g.expect(200);
    assert!(g.body == m);

    for reference in ["v1", md.as_str()] {
        let g = reg.get_manifest("img/app", reference).await;
        g.expect(200);
        assert!(
            g.body == m,
            "GET manifests/{reference}: bytes differ: {}",
            g.text()
        );
        assert_eq!(g.content_type(), OCI_MANIFEST);
        assert_eq!(g.must("docker-content-digest"), md);
        assert_eq!(g.must("content-length"), m.len().to_string());

        let h = reg
            .go(reg
                .req(Method::HEAD, &format!("/v2/img/app/manifests/{reference}"))
                .header("accept", ACCEPT_ALL))
            .await;
        h.expect(200);
        assert_eq!(h.content_type(), OCI_MANIFEST);
        assert_eq!(h.must("docker-content-digest"), md);
        assert_eq!(h.must("content-length"), m.len().to_string());
        assert!(h.body.is_empty());
    }

    // Manifests are scoped to their repository.
    reg.get_manifest("img/other", &md)
        .await
        .expect_error(&[404], &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]);

    // Retagging and overwriting a tag.
    let (m2, md2, _) = reg.push_image("img/app", "v1", "oci-2").await;
    let g = reg.get_manifest("img/app", "v1").await;
    g.expect(200);
    assert!(g.body == m2);
    assert_eq!(g.must("docker-content-digest"), md2);
    // The old manifest is still there by digest.
    let g = reg.get_manifest("img/app", &md).await;
    g.expect(200);
    assert!(g.body == m);
}

#[tokio::test]
async fn manifest_put_by_digest() {
    let reg = start();
    let config = br#"{"os":"linux"}"#.to_vec();
    let cd = reg.push_blob("bydigest", &config).await;
    let m = oci_manifest(&cd, config.len(), &[], json!({"k": "v"}));
    let md = sha(&m);

    let r = reg.put_manifest("bydigest", &md, OCI_MANIFEST, &m).await;
    r.expect(201);
    assert_eq!(r.must("docker-content-digest"), md);
    let murl = reg.resolve(&r.url, r.must("location"));
    let g = reg
        .go(reg.req_url(Method::GET, &murl).header("accept", ACCEPT_ALL))
        .await;
    g.expect(200);
    assert!(g.body == m);
    let g = reg.get_manifest("bydigest", &md).await;
    g.expect(200);
    assert!(g.body == m);
    assert_eq!(g.content_type(), OCI_MANIFEST);

    // Pushing by digest creates no tag.
    let t = reg.get("/v2/bydigest/tags/list").await;
    t.expect(200);
    assert_eq!(str_list(&t.json()["tags"], "tags"), Vec::<String>::new());

    // The body must match the digest in the URL.
    let m2 = oci_manifest(&cd, config.len(), &[], json!({"k": "other"}));
    reg.put_manifest("bydigest", &md, OCI_MANIFEST, &m2)
        .await
        .expect_error(&[400], &["DIGEST_INVALID"]);
    let g = reg.get_manifest("bydigest", &md).await;
    g.expect(200);
    assert!(g.body == m, "a rejected PUT must not replace the manifest");
    reg.get_manifest("bydigest", &sha(&m2))
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
}

#[tokio::test]
async fn manifest_referencing_missing_content() {
    let reg = start();
    let config = br#"{"os":"linux"}"#.to_vec();
    let cd = reg.push_blob("missing/x", &config).await;
    let present = blob_bytes("present", 100);
    let pd = reg.push_blob("missing/x", &present).await;
    let absent = sha(b"absent layer");

    // Missing layer.
    let m = oci_manifest(&cd, config.len(), &[(&pd, 100), (&absent, 12)], json!({}));
    reg.put_manifest("missing/x", "t", OCI_MANIFEST, &m)
        .await
        .expect_error(&[400], &["MANIFEST_BLOB_UNKNOWN"]);
    // Missing config.
    let m = oci_manifest(&absent, 12, &[(&pd, 100)], json!({}));
    reg.put_manifest("missing/x", "t", OCI_MANIFEST, &m)
        .await
        .expect_error(&[400], &["MANIFEST_BLOB_UNKNOWN"]);
    // A blob that exists only in another repository does not count.
    let elsewhere = blob_bytes("elsewhere", 64);
    let ed = reg.push_blob("missing/other", &elsewhere).await;
    let m = oci_manifest(&cd, config.len(), &[(&ed, 64)], json!({}));
    reg.put_manifest("missing/x", "t", OCI_MANIFEST, &m)
        .await
        .expect_error(&[400], &["MANIFEST_BLOB_UNKNOWN"]);

    // An index whose child manifest is missing.
    let idx = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(b"no such manifest"), "size": 16,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    reg.put_manifest("missing/x", "idx", OCI_INDEX, &idx)
        .await
        .expect_error(&[400], &["MANIFEST_BLOB_UNKNOWN"]);

    // None of the rejected pushes created a tag.
    for tag in ["t", "idx"] {
        let r = reg.get_manifest("missing/x", tag).await;
        r.expect_error(&[404], &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    }
}

#[tokio::test]
async fn invalid_manifests() {
    let reg = start();
    let config = br#"{"os":"linux"}"#.to_vec();
    let cd = reg.push_blob("inv/x", &config).await;
    let invalid: [&[u8]; 5] = [
        b"{not json",
        b"",
        b"[]",
        b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\"",
        b"\xff\xfe\x00garbage",
    ];
    for body in invalid {
        let r = reg.put_manifest("inv/x", "bad", OCI_MANIFEST, body).await;
        r.expect_error(&[400], &["MANIFEST_INVALID"]);
    }
    // Valid JSON that is not a valid image manifest: config is not a descriptor.
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": "nope", "layers": []
    }))
    .unwrap();
    reg.put_manifest("inv/x", "bad", OCI_MANIFEST, &body)
        .await
        .expect_error(&[400], &["MANIFEST_INVALID"]);
    // A descriptor whose digest is malformed.
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:nothex", "size": 2}, "layers": []
    }))
    .unwrap();
    reg.put_manifest("inv/x", "bad", OCI_MANIFEST, &body)
        .await
        .expect_error(&[400], &["MANIFEST_INVALID", "DIGEST_INVALID"]);
    // Invalid tag names.
    let ok = oci_manifest(&cd, config.len(), &[], json!({}));
    let long_tag = "t".repeat(129);
    for tag in ["-leading-dash", ".dot", long_tag.as_str()] {
        let r = reg.put_manifest("inv/x", tag, OCI_MANIFEST, &ok).await;
        r.expect_error(
            &[400, 404],
            &[
                "TAG_INVALID",
                "MANIFEST_INVALID",
                "NAME_INVALID",
                "MANIFEST_UNKNOWN",
            ],
        );
    }
    reg.get_manifest("inv/x", "bad")
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    // A 128-character tag is valid.
    let max_tag = format!("T{}", "a".repeat(127));
    reg.push_manifest("inv/x", &max_tag, OCI_MANIFEST, &ok)
        .await;
    let t = reg.get("/v2/inv/x/tags/list").await;
    t.expect(200);
    assert_eq!(str_list(&t.json()["tags"], "tags"), vec![max_tag]);
}

/// Build a compact OCI manifest of exactly `size` bytes (padded with an annotation).
fn manifest_of_size(cd: &str, config_len: usize, size: usize) -> Vec<u8> {
    let make = |pad: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config_len},
            "layers": [],
            "annotations": {"pad": "a".repeat(pad)},
        }))
        .unwrap()
    };
    let base = make(0).len();
    let m = make(size - base);
    assert_eq!(m.len(), size);
    m
}

/// An oversized manifest PUT must be refused: either a 400/413 error response, or (when
/// the server answers before reading the whole body and closes) a body-write failure on
/// the client side; never a timeout, i.e. the server did not sit there buffering.
async fn oversize_refused(reg: &Reg, path: &str, res: reqwest::Result<reqwest::Response>) {
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            let resp = Resp {
                method: Method::PUT,
                url: reg.url(path),
                status,
                headers,
                body,
            };
            resp.expect_error(&[400, 413], &["SIZE_INVALID", "MANIFEST_INVALID"]);
        }
        Err(e) => {
            assert!(!e.is_timeout(), "PUT {path}: timed out: {e:?}");
            let dbg = format!("{e:?}");
            assert!(
                e.is_request()
                    && (dbg.contains("BodyWrite")
                        || dbg.contains("BrokenPipe")
                        || dbg.contains("ConnectionReset")),
                "PUT {path}: unexpected failure (want an error response or an early close): {dbg}"
            );
        }
    }
}

#[tokio::test]
async fn manifest_size_limit() {
    let reg = start();
    let config = br#"{"os":"linux"}"#.to_vec();
    let cd = reg.push_blob("big/x", &config).await;
    const MIB4: usize = 4 * 1024 * 1024;

    // Registries SHOULD accept manifests of at least 4 MiB.
    let at_limit = manifest_of_size(&cd, config.len(), MIB4);
    let d = reg
        .push_manifest("big/x", "at-limit", OCI_MANIFEST, &at_limit)
        .await;
    let g = reg.get_manifest("big/x", &d).await;
    g.expect(200);
    assert!(g.body == at_limit);

    // One byte more is refused.
    let over = manifest_of_size(&cd, config.len(), MIB4 + 1);
    let t0 = std::time::Instant::now();
    let res = reg
        .http
        .put(reg.url("/v2/big/x/manifests/over"))
        .header("content-type", OCI_MANIFEST)
        .body(over)
        .send()
        .await;
    oversize_refused(&reg, "/v2/big/x/manifests/over", res).await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );

    // A much larger body without Content-Length (chunked) is refused too, promptly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.json");
    let mut huge = b"{\"schemaVersion\":2,\"annotations\":{\"pad\":\"".to_vec();
    huge.resize(64 << 20, b'a');
    std::fs::write(&path, &huge).unwrap();
    let file = tokio::fs::File::open(&path).await.unwrap();
    let t0 = std::time::Instant::now();
    let res = reg
        .http
        .put(reg.url("/v2/big/x/manifests/huge"))
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::from(file))
        .send()
        .await;
    oversize_refused(&reg, "/v2/big/x/manifests/huge", res).await;
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );

    // Still serving; nothing was stored under the rejected tags.
    reg.get("/v2/").await.expect(200);
    for tag in ["over", "huge"] {
        reg.get_manifest("big/x", tag)
            .await
            .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    }
}

#[tokio::test]
async fn docker_schema2_and_manifest_list_round_trip() {
    let reg = start();
    let mut children = vec![];
    for arch in ["amd64", "arm64"] {
        let config = format!(
            "{{\"architecture\":\"{arch}\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\"}}}}"
        )
        .into_bytes();
        let layer = blob_bytes(arch, 2048);
        let cd = reg.push_blob("docker/img", &config).await;
        let ld = reg.push_blob("docker/img", &layer).await;
        // Docker writes schema2 with 3-space indentation; keep odd formatting.
        let m = format!(
            "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {{\n      \"mediaType\": \"{DOCKER_CONFIG}\",\n      \"size\": {},\n      \"digest\": \"{cd}\"\n   }},\n   \"layers\": [\n      {{\n         \"mediaType\": \"{DOCKER_LAYER}\",\n         \"size\": {},\n         \"digest\": \"{ld}\"\n      }}\n   ]\n}}",
            config.len(),
            layer.len()
        )
        .into_bytes();
        let md = reg
            .push_manifest("docker/img", &format!("{arch}-only"), DOCKER_MANIFEST, &m)
            .await;
        let g = reg
            .get_manifest("docker/img", &format!("{arch}-only"))
            .await;
        g.expect(200);
        assert!(g.body == m);
        assert_eq!(g.content_type(), DOCKER_MANIFEST);
        assert_eq!(g.must("docker-content-digest"), md);
        children.push((arch, md, m.len()));
    }
    let list = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": children.iter().map(|(arch, d, size)| json!({
            "mediaType": DOCKER_MANIFEST, "size": size, "digest": d,
            "platform": {"architecture": arch, "os": "linux"}
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let ld = reg
        .push_manifest("docker/img", "latest", DOCKER_LIST, &list)
        .await;
    for reference in ["latest", ld.as_str()] {
        let g = reg.get_manifest("docker/img", reference).await;
        g.expect(200);
        assert!(g.body == list);
        assert_eq!(g.content_type(), DOCKER_LIST);
        assert_eq!(g.must("docker-content-digest"), ld);
        let h = reg
            .go(reg
                .req(
                    Method::HEAD,
                    &format!("/v2/docker/img/manifests/{reference}"),
                )
                .header("accept", ACCEPT_ALL))
            .await;
        h.expect(200);
        assert_eq!(h.content_type(), DOCKER_LIST);
        assert_eq!(h.must("content-length"), list.len().to_string());
    }
}

#[tokio::test]
async fn oci_index_round_trip() {
    let reg = start();
    let (m1, d1, _) = reg.push_image("multi/arch", "amd64", "idx-amd64").await;
    let (m2, d2, _) = reg.push_image("multi/arch", "arm64", "idx-arm64").await;
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d1, "size": m1.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": d2, "size": m2.len(),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
        "annotations": {"org.opencontainers.image.ref.name": "1.0"},
    }))
    .unwrap();
    let id = reg
        .push_manifest("multi/arch", "1.0", OCI_INDEX, &index)
        .await;
    for reference in ["1.0", id.as_str()] {
        let g = reg.get_manifest("multi/arch", reference).await;
        g.expect(200);
        assert!(g.body == index);
        assert_eq!(g.content_type(), OCI_INDEX);
        assert_eq!(g.must("docker-content-digest"), id);
    }
    // Children are retrievable by digest.
    let g = reg.get_manifest("multi/arch", &d1).await;
    g.expect(200);
    assert!(g.body == m1);
}

#[tokio::test]
async fn unknown_manifests_and_repositories() {
    let reg = start();
    reg.push_image("known/repo", "v1", "known").await;

    reg.get_manifest("known/repo", "nope")
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    reg.get_manifest("known/repo", &sha(b"nope"))
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    let h = reg.head("/v2/known/repo/manifests/nope").await;
    h.expect(404);
    assert!(h.body.is_empty());
    reg.get_manifest("unknown/repo", "v1")
        .await
        .expect_error(&[404], &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]);
    reg.head("/v2/unknown/repo/manifests/v1").await.expect(404);
    reg.get(&format!("/v2/unknown/repo/blobs/{}", sha(b"x")))
        .await
        .expect_error(&[404], &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
    // Deleting in an unknown repository.
    reg.go(reg.req(
        Method::DELETE,
        &format!("/v2/unknown/repo/manifests/{}", sha(b"x")),
    ))
    .await
    .expect_error(&[404], &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]);
    // A reference that is neither a tag nor a digest.
    let r = reg.get_manifest("known/repo", "sha256:nothex").await;
    r.expect_error(
        &[400, 404],
        &[
            "DIGEST_INVALID",
            "MANIFEST_UNKNOWN",
            "MANIFEST_INVALID",
            "TAG_INVALID",
        ],
    );
}

#[tokio::test]
async fn delete_manifest_by_digest() {
    let reg = start();
    let (_, md, blobs) = reg.push_image("del/app", "v1", "del").await;
    // A second tag on the same manifest.
    let g = reg.get_manifest("del/app", "v1").await;
    reg.push_manifest("del/app", "v1-alias", OCI_MANIFEST, &g.body)
        .await;

    let r = reg
        .go(reg.req(Method::DELETE, &format!("/v2/del/app/manifests/{md}")))
        .await;
    r.expect(202);
    reg.get_manifest("del/app", &md)
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    reg.head(&format!("/v2/del/app/manifests/{md}"))
        .await
        .expect(404);
    // Tags pointing at it are gone as well.
    for tag in ["v1", "v1-alias"] {
        reg.get_manifest("del/app", tag)
            .await
            .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    }
    let t = reg.get("/v2/del/app/tags/list").await;
    if t.status == 200 {
        assert_eq!(str_list(&t.json()["tags"], "tags"), Vec::<String>::new());
    } else {
        t.expect_error(&[404], &["NAME_UNKNOWN"]);
    }
    // Second delete: 404.
    reg.go(reg.req(Method::DELETE, &format!("/v2/del/app/manifests/{md}")))
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    // Blobs are untouched by a manifest delete.
    reg.head(&format!("/v2/del/app/blobs/{}", blobs[1]))
        .await
        .expect(200);
}

#[tokio::test]
async fn delete_tag_removes_only_the_tag() {
    let reg = start();
    let (m, md, _) = reg.push_image("tagdel/app", "keep", "tagdel").await;
    reg.push_manifest("tagdel/app", "drop", OCI_MANIFEST, &m)
        .await;

    let r = reg
        .go(reg.req(Method::DELETE, "/v2/tagdel/app/manifests/drop"))
        .await;
    r.expect(202);
    reg.get_manifest("tagdel/app", "drop")
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    let g = reg.get_manifest("tagdel/app", "keep").await;
    g.expect(200);
    assert!(g.body == m);
    let g = reg.get_manifest("tagdel/app", &md).await;
    g.expect(200);
    assert!(g.body == m);
    let t = reg.get("/v2/tagdel/app/tags/list").await;
    t.expect(200);
    assert_eq!(str_list(&t.json()["tags"], "tags"), vec!["keep"]);
    // Deleting a tag that does not exist.
    reg.go(reg.req(Method::DELETE, "/v2/tagdel/app/manifests/drop"))
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
}

// ---------------------------------------------------------------------------
// Referrers (distribution-spec v1.1)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn referrers_api() {
    let reg = start();
    let repo = "refs/app";

    // Blobs for the artifacts.
    let empty = b"{}".to_vec();
    let empty_d = reg.push_blob(repo, &empty).await;
    let sbom = blob_bytes("sbom", 777);
    let sbom_d = reg.push_blob(repo, &sbom).await;
    let sig_cfg = br#"{"sig":"config"}"#.to_vec();
    let sig_cfg_d = reg.push_blob(repo, &sig_cfg).await;
    let sig = blob_bytes("sig", 99);
    let sig_d = reg.push_blob(repo, &sig).await;

    // The subject: an image manifest, which is pushed AFTER its first referrer
    // (registries MUST accept a subject that does not exist yet).
    let s_cfg = br#"{"os":"linux","architecture":"amd64"}"#.to_vec();
    let s_cfg_d = reg.push_blob(repo, &s_cfg).await;
    let subject = oci_manifest(&s_cfg_d, s_cfg.len(), &[], json!({"role": "subject"}));
    let subject_d = sha(&subject);
    let subject_desc =
        json!({"mediaType": OCI_MANIFEST, "digest": subject_d, "size": subject.len()});

    // 1. SBOM artifact: artifactType set, empty config.
    let a1_ann = json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "org.example.sbom.format": "json"});
    let a1 = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": empty_d, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom_d, "size": sbom.len()}],
        "subject": subject_desc,
        "annotations": a1_ann,
    }))
    .unwrap();
    let a1_d = sha(&a1);
    let r = reg.put_manifest(repo, &a1_d, OCI_MANIFEST, &a1).await;
    r.expect(201);
    assert_eq!(r.must("oci-subject"), subject_d);
    assert_eq!(r.must("docker-content-digest"), a1_d);

    reg.push_manifest(repo, "v1", OCI_MANIFEST, &subject).await;

    // 2. Signature: no artifactType -> the config mediaType stands in.
    let a2_ann = json!({"org.example.signature.fingerprint": "abcd"});
    let a2 = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": SIG_CONFIG_TYPE, "digest": sig_cfg_d, "size": sig_cfg.len()},
        "layers": [{"mediaType": "application/octet-stream", "digest": sig_d, "size": sig.len()}],
        "subject": subject_desc,
        "annotations": a2_ann,
    }))
    .unwrap();
    let a2_d = sha(&a2);
    let r = reg
        .put_manifest(repo, "sig-tagged", OCI_MANIFEST, &a2)
        .await;
    r.expect(201);
    assert_eq!(r.must("oci-subject"), subject_d);

    // 3. An index with a subject and no artifactType -> artifactType omitted.
    let a3_ann = json!({"org.example.kind": "bundle"});
    let a3 = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": a1_d, "size": a1.len()}],
        "subject": subject_desc,
        "annotations": a3_ann,
    }))
    .unwrap();
    let a3_d = sha(&a3);
    let r = reg.put_manifest(repo, &a3_d, OCI_INDEX, &a3).await;
    r.expect(201);
    assert_eq!(r.must("oci-subject"), subject_d);

    // A manifest without subject gets no OCI-Subject header and is no referrer.
    let (_, plain_d, _) = reg.push_image(repo, "plain", "plain").await;
    let r = reg
        .put_manifest(
            repo,
            "plain",
            OCI_MANIFEST,
            &reg.get_manifest(repo, "plain").await.body,
        )
        .await;
    r.expect(201);
    assert!(
        r.h("oci-subject").is_none(),
        "OCI-Subject on a manifest without subject"
    );

    // The full list.
    let r = reg.get(&format!("/v2/{repo}/referrers/{subject_d}")).await;
    r.expect(200);
    assert!(
        r.content_type().starts_with(OCI_INDEX),
        "referrers Content-Type {}",
        r.content_type()
    );
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().expect("manifests array");
    assert_eq!(list.len(), 3, "referrers: {v}");
    let find = |d: &str| {
        list.iter()
            .find(|x| x["digest"] == d)
            .unwrap_or_else(|| panic!("{d} missing in {v}"))
    };
    let e1 = find(&a1_d);
    assert_eq!(e1["mediaType"], OCI_MANIFEST);
    assert_eq!(e1["size"], a1.len());
    assert_eq!(e1["artifactType"], SBOM_TYPE);
    assert_eq!(e1["annotations"], a1_ann);
    let e2 = find(&a2_d);
    assert_eq!(e2["mediaType"], OCI_MANIFEST);
    assert_eq!(e2["size"], a2.len());
    assert_eq!(e2["artifactType"], SIG_CONFIG_TYPE);
    assert_eq!(e2["annotations"], a2_ann);
    let e3 = find(&a3_d);
    assert_eq!(e3["mediaType"], OCI_INDEX);
    assert_eq!(e3["size"], a3.len());
    assert!(
        e3.get("artifactType").is_none(),
        "index referrer without artifactType: {e3}"
    );
    assert_eq!(e3["annotations"], a3_ann);
    assert!(list.iter().all(|x| x["digest"] != plain_d.as_str()));

    // Filtered by artifactType.
    let r = reg
        .get(&format!(
            "/v2/{repo}/referrers/{subject_d}?artifactType={SBOM_TYPE}"
        ))
        .await;
    r.expect(200);
    assert_eq!(r.must("oci-filters-applied"), "artifactType");
    let v = r.json();
    let list = v["manifests"].as_array().expect("manifests");
    assert_eq!(list.len(), 1, "filtered: {v}");
    assert_eq!(list[0]["digest"], a1_d.as_str());
    let r = reg
        .get(&format!(
            "/v2/{repo}/referrers/{subject_d}?artifactType=application/vnd.none"
        ))
        .await;
    r.expect(200);
    assert_eq!(r.must("oci-filters-applied"), "artifactType");
    assert_eq!(r.json()["manifests"], json!([]));

    // No referrers: an empty index, not 404.
    for (r_repo, d) in [
        (repo, plain_d.clone()),
        (repo, sha(b"never pushed")),
        ("refs/other", subject_d.clone()),
    ] {
        if r_repo == "refs/other" {
            reg.push_image("refs/other", "x", "other").await;
        }
        let r = reg.get(&format!("/v2/{r_repo}/referrers/{d}")).await;
        r.expect(200);
        assert!(r.content_type().starts_with(OCI_INDEX));
        let v = r.json();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(v["manifests"], json!([]), "referrers of {d} in {r_repo}");
    }
    // Invalid digest: 400.
    reg.get(&format!("/v2/{repo}/referrers/sha256:nothex"))
        .await
        .expect_error(&[400], &["DIGEST_INVALID"]);
    // A tag is not a digest.
    let r = reg.get(&format!("/v2/{repo}/referrers/v1")).await;
    r.expect_error(&[400], &["DIGEST_INVALID"]);

    // Deleting a referrer removes it from the list.
    reg.go(reg.req(Method::DELETE, &format!("/v2/{repo}/manifests/{a2_d}")))
        .await
        .expect(202);
    let r = reg.get(&format!("/v2/{repo}/referrers/{subject_d}")).await;
    r.expect(200);
    let v = r.json();
    let digests: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 2, "{v}");
    assert!(!digests.contains(&a2_d.as_str()));
}

// ---------------------------------------------------------------------------
// Content discovery
// ---------------------------------------------------------------------------

/// Follow `Link: rel="next"` from `first`, collecting `field` from every page.
async fn paginate(reg: &Reg, first: &str, field: &str, n: usize) -> Vec<String> {
    let mut url = reg.url(first);
    let mut all = vec![];
    for _ in 0..50 {
        let r = reg.go(reg.req_url(Method::GET, &url)).await;
        r.expect(200);
        let page = str_list(&r.json()[field], field);
        assert!(
            page.len() <= n,
            "{}: {} entries for n={n}",
            r.what(),
            page.len()
        );
        all.extend(page.iter().cloned());
        match next_link(&r) {
            Some(next) => {
                assert!(
                    !page.is_empty(),
                    "{}: empty page with a Link header",
                    r.what()
                );
                url = reg.resolve(&r.url, &next);
            }
            None => return all,
        }
    }
    panic!("pagination of {first} did not terminate");
}

#[tokio::test]
async fn tags_list_and_pagination() {
    let reg = start();
    let (m, _, _) = reg.push_image("tags/app", "latest", "tags").await;
    let mut tags = vec!["v1.0", "v1.1", "a1", "a2", "b1", "b2", "c1"];
    for t in &tags {
        reg.push_manifest("tags/app", t, OCI_MANIFEST, &m).await;
    }
    tags.push("latest");
    tags.sort();
    let tags: Vec<String> = tags.into_iter().map(String::from).collect();

    let r = reg.get("/v2/tags/app/tags/list").await;
    r.expect(200);
    assert!(r.content_type().starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["name"], "tags/app");
    assert_eq!(str_list(&v["tags"], "tags"), tags);
    assert!(r.h("link").is_none(), "no Link header for a complete list");

    // n alone.
    let r = reg.get("/v2/tags/app/tags/list?n=3").await;
    r.expect(200);
    assert_eq!(str_list(&r.json()["tags"], "tags"), tags[..3].to_vec());
    assert!(
        next_link(&r).is_some(),
        "n=3 of 8 tags must carry Link rel=next"
    );
    // Following Link headers yields every tag exactly once, in order.
    assert_eq!(
        paginate(&reg, "/v2/tags/app/tags/list?n=3", "tags", 3).await,
        tags
    );
    assert_eq!(
        paginate(&reg, "/v2/tags/app/tags/list?n=1", "tags", 1).await,
        tags
    );

    // last.
    let r = reg.get("/v2/tags/app/tags/list?n=2&last=b1").await;
    r.expect(200);
    assert_eq!(str_list(&r.json()["tags"], "tags"), vec!["b2", "c1"]);
    let r = reg.get("/v2/tags/app/tags/list?last=b1").await;
    r.expect(200);
    assert_eq!(str_list(&r.json()["tags"], "tags"), tags[3..].to_vec());
    let r = reg.get("/v2/tags/app/tags/list?last=b").await;
    r.expect(200);
    assert_eq!(str_list(&r.json()["tags"], "tags"), tags[2..].to_vec());
    let r = reg.get("/v2/tags/app/tags/list?last=zzz").await;
    r.expect(200);
    assert_eq!(str_list(&r.json()["tags"], "tags"), Vec::<String>::new());

    // n=0: empty list and no Link.
    let r = reg.get("/v2/tags/app/tags/list?n=0").await;
    r.expect(200);
    assert_eq!(r.json()["tags"], json!([]));
    assert!(r.h("link").is_none(), "n=0 must not carry a Link header");

    // Absurd n: capped (then paginated) or refused with a clear error, never 5xx.
    let r = reg.get("/v2/tags/app/tags/list?n=1000000").await;
    if r.status == 200 {
        assert_eq!(str_list(&r.json()["tags"], "tags"), tags);
    } else {
        r.expect_error(
            &[400],
            &[
                "PAGINATION_NUMBER_INVALID",
                "UNSUPPORTED",
                "NAME_INVALID",
                "SIZE_INVALID",
            ],
        );
    }
    for bad in ["-1", "abc", "99999999999999999999999"] {
        let r = reg.get(&format!("/v2/tags/app/tags/list?n={bad}")).await;
        assert!(r.status == 200 || r.status == 400, "n={bad}: {}", r.status);
        if r.status == 400 {
            let v = r.json();
            assert!(v["errors"].is_array(), "n={bad}: {v}");
        }
    }

    // Unknown repository.
    reg.get("/v2/tags/nope/tags/list")
        .await
        .expect_error(&[404], &["NAME_UNKNOWN"]);
}

#[tokio::test]
async fn catalog_and_pagination() {
    let reg = start();
    let mut repos = vec!["gamma", "alpha", "beta/one", "beta/two", "team/app/api"];
    for (i, repo) in repos.iter().enumerate() {
        reg.push_image(repo, "v1", &format!("cat-{i}")).await;
    }
    repos.sort();
    let repos: Vec<String> = repos.into_iter().map(String::from).collect();

    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    assert!(r.content_type().starts_with("application/json"));
    assert_eq!(str_list(&r.json()["repositories"], "repositories"), repos);

    let r = reg.get("/v2/_catalog?n=2").await;
    r.expect(200);
    assert_eq!(
        str_list(&r.json()["repositories"], "repositories"),
        repos[..2].to_vec()
    );
    assert!(
        next_link(&r).is_some(),
        "n=2 of 5 repositories must carry Link rel=next"
    );
    assert_eq!(
        paginate(&reg, "/v2/_catalog?n=2", "repositories", 2).await,
        repos
    );

    let r = reg.get("/v2/_catalog?n=10&last=beta/one").await;
    r.expect(200);
    assert_eq!(
        str_list(&r.json()["repositories"], "repositories"),
        repos[2..].to_vec()
    );

    let r = reg.get("/v2/_catalog?n=0").await;
    r.expect(200);
    assert_eq!(r.json()["repositories"], json!([]));
    assert!(r.h("link").is_none());

    let r = reg.get("/v2/_catalog?n=1000000").await;
    if r.status == 200 {
        assert_eq!(str_list(&r.json()["repositories"], "repositories"), repos);
    } else {
        r.expect_error(
            &[400],
            &["PAGINATION_NUMBER_INVALID", "UNSUPPORTED", "SIZE_INVALID"],
        );
    }
    let r = reg.get("/v2/_catalog?n=-5").await;
    assert!(r.status == 200 || r.status == 400, "n=-5: {}", r.status);
}

// ---------------------------------------------------------------------------
// Repository names
// ---------------------------------------------------------------------------

#[tokio::test]
async fn nested_and_tricky_names() {
    let reg = start();
    // Names whose components collide with API path keywords.
    let names = [
        "team/app/api",
        "a/manifests/b",
        "x/manifests",
        "blobs/uploads",
        "tags/list",
        "referrers/x",
        "v2",
        "a.b-c_d/e__f/x--y",
    ];
    for (i, name) in names.iter().enumerate() {
        let (m, md, blobs) = reg.push_image(name, "t1", &format!("name-{i}")).await;
        let g = reg.get_manifest(name, "t1").await;
        g.expect(200);
        assert!(g.body == m, "{name}: manifest bytes");
        reg.get_manifest(name, &md).await.expect(200);
        reg.head(&format!("/v2/{name}/blobs/{}", blobs[1]))
            .await
            .expect(200);
        let t = reg.get(&format!("/v2/{name}/tags/list")).await;
        t.expect(200);
        assert_eq!(t.json()["name"], *name);
        assert_eq!(str_list(&t.json()["tags"], "tags"), vec!["t1"]);
        reg.get(&format!("/v2/{name}/referrers/{md}"))
            .await
            .expect(200);
    }
    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(str_list(&r.json()["repositories"], "repositories"), want);
}

#[tokio::test]
async fn invalid_names_are_rejected() {
    let reg = start();
    let config = br#"{"os":"linux"}"#.to_vec();
    let cd = reg.push_blob("valid", &config).await;
    let m = oci_manifest(&cd, config.len(), &[], json!({}));
    let long = "a".repeat(256);
    let bad = [
        "UPPER/x",
        "a//b",
        "%2e%2e%2fetc",
        "..%2f..%2fetc",
        // (`a/%2e%2e/b` cannot be sent: the URL parser resolves it to `b` client-side.)
        "-lead",
        "trail-",
        "a..b",
        "a/.hidden",
        "sp%20ace",
        long.as_str(),
    ];
    let codes = &[
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "MANIFEST_UNKNOWN",
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_UNKNOWN",
    ];
    for name in bad {
        let r = reg.get(&format!("/v2/{name}/tags/list")).await;
        r.expect_error(&[400, 404], codes);
        let r = reg.get_manifest(name, "latest").await;
        r.expect_error(&[400, 404], codes);
        let r = reg.put_manifest(name, "latest", OCI_MANIFEST, &m).await;
        r.expect_error(&[400, 404], codes);
        let r = reg
            .go(reg.req(Method::POST, &format!("/v2/{name}/blobs/uploads/")))
            .await;
        r.expect_error(&[400, 404], codes);
        let r = reg
            .go(reg
                .req(
                    Method::POST,
                    &format!("/v2/{name}/blobs/uploads/?digest={}", sha(b"x")),
                )
                .body(b"x".to_vec()))
            .await;
        r.expect_error(&[400, 404], codes);
        let r = reg.get(&format!("/v2/{name}/blobs/{cd}")).await;
        r.expect_error(&[400, 404], codes);
    }
    // Upper case must be NAME_INVALID specifically when it reaches the API.
    let r = reg
        .put_manifest("UPPER/x", "latest", OCI_MANIFEST, &m)
        .await;
    if r.status == 400 {
        r.expect_error(&[400], &["NAME_INVALID"]);
    }
    // Nothing got created.
    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    assert_eq!(
        str_list(&r.json()["repositories"], "repositories"),
        vec!["valid"]
    );
}

// ---------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sigkill_after_acknowledged_pushes_loses_nothing() {
    let reg = start();
    let repo = "durable/app";
    // Monolithic blobs + manifest + tags.
    let (m1, d1, blobs1) = reg.push_image(repo, "v1", "dur-1").await;
    reg.push_manifest(repo, "stable", OCI_MANIFEST, &m1).await;
    // A chunked blob.
    let big = blob_bytes("dur-big", 2 << 20);
    let big_d = sha(&big);
    let (mut loc, _) = reg.start_upload(repo).await;
    let mut off = 0;
    for c in big.chunks(700_000) {
        let r = reg
            .go(reg
                .req_url(Method::PATCH, &loc)
                .header("content-range", format!("{}-{}", off, off + c.len() - 1))
                .body(c.to_vec()))
            .await;
        r.expect(202);
        off += c.len();
        loc = reg.resolve(&r.url, r.must("location"));
    }
    reg.go(reg.req_url(Method::PUT, &with_digest(&loc, &big_d)))
        .await
        .expect(201);
    // A mount into another repository.
    reg.go(reg.req(
        Method::POST,
        &format!("/v2/durable/mirror/blobs/uploads/?mount={big_d}&from={repo}"),
    ))
    .await
    .expect(201);
    // A manifest using the chunked blob, and an index over both manifests.
    let cfg = br#"{"os":"linux","architecture":"arm64"}"#.to_vec();
    let cfg_d = reg.push_blob(repo, &cfg).await;
    let m2 = oci_manifest(&cfg_d, cfg.len(), &[(&big_d, big.len())], json!({"n": "2"}));
    let d2 = reg.push_manifest(repo, "v2", OCI_MANIFEST, &m2).await;
    let idx = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d1, "size": m1.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": d2, "size": m2.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ]
    }))
    .unwrap();
    let idx_d = reg.push_manifest(repo, "multi", OCI_INDEX, &idx).await;
    // A referrer.
    let empty_d = reg.push_blob(repo, b"{}").await;
    let art = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": empty_d, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": empty_d, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": d1, "size": m1.len()},
    }))
    .unwrap();
    let art_d = sha(&art);
    reg.put_manifest(repo, &art_d, OCI_MANIFEST, &art)
        .await
        .expect(201);
    // A tag deletion, and then the very last acknowledged write: a retag.
    reg.go(reg.req(Method::DELETE, &format!("/v2/{repo}/manifests/stable")))
        .await
        .expect(202);
    reg.push_manifest(repo, "v1", OCI_MANIFEST, &m2).await;

    let reg = reg.crash_and_restart();

    let g = reg.get_manifest(repo, "v1").await;
    g.expect(200);
    assert!(g.body == m2, "retag v1 -> m2 lost");
    let g = reg.get_manifest(repo, "v2").await;
    g.expect(200);
    assert!(g.body == m2);
    let g = reg.get_manifest(repo, &d1).await;
    g.expect(200);
    assert!(g.body == m1);
    let g = reg.get_manifest(repo, "multi").await;
    g.expect(200);
    assert!(g.body == idx);
    assert_eq!(g.content_type(), OCI_INDEX);
    assert_eq!(g.must("docker-content-digest"), idx_d);
    let g = reg.get_manifest(repo, &art_d).await;
    g.expect(200);
    assert!(g.body == art);
    reg.get_manifest(repo, "stable")
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);

    let g = reg.get(&format!("/v2/{repo}/blobs/{big_d}")).await;
    g.expect(200);
    assert!(g.body == big, "chunked blob lost or corrupted");
    let g = reg.get(&format!("/v2/durable/mirror/blobs/{big_d}")).await;
    g.expect(200);
    assert!(g.body == big, "mounted blob lost");
    for b in &blobs1 {
        reg.get(&format!("/v2/{repo}/blobs/{b}")).await.expect(200);
    }

    let t = reg.get(&format!("/v2/{repo}/tags/list")).await;
    t.expect(200);
    assert_eq!(
        str_list(&t.json()["tags"], "tags"),
        vec!["multi", "v1", "v2"]
    );
    let c = reg.get("/v2/_catalog").await;
    c.expect(200);
    assert_eq!(
        str_list(&c.json()["repositories"], "repositories"),
        vec!["durable/app", "durable/mirror"]
    );
    let r = reg.get(&format!("/v2/{repo}/referrers/{d1}")).await;
    r.expect(200);
    let v = r.json();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["digest"], art_d.as_str());
    assert_eq!(list[0]["artifactType"], SBOM_TYPE);
}

/// The OCI conformance suite reads a manifest by a reference that cannot be a tag and
/// expects 404; a PUT to such a reference is told the tag is invalid.
#[tokio::test]
async fn invalid_tag_reads_are_404_and_writes_400() {
    let reg = start();
    let (_, _, _) = reg.push_image("badtag/app", "v1", "badtag").await;
    let long = "t".repeat(129);
    for reference in [".INVALID_MANIFEST_NAME", "-dash", long.as_str()] {
        let g = reg.get_manifest("badtag/app", reference).await;
        g.expect_error(&[404], &["MANIFEST_UNKNOWN"]);
        let h = reg
            .head(&format!("/v2/badtag/app/manifests/{reference}"))
            .await;
        h.expect(404);
    }
    let config = blob_bytes("badtag-config", 12);
    let cd = reg.push_blob("badtag/app", &config).await;
    let m = oci_manifest(&cd, config.len(), &[], json!({}));
    reg.put_manifest("badtag/app", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, &m)
        .await
        .expect_error(&[400], &["TAG_INVALID"]);
}

/// A descriptor whose size differs from the stored blob's is refused at push, naming the
/// descriptor, the claimed and the real size; nothing is tagged.
#[tokio::test]
async fn manifest_with_wrong_descriptor_size_is_refused() {
    let reg = start();
    let config = blob_bytes("sizes-config", 40);
    let layer = blob_bytes("sizes-layer", 1000);
    let cd = reg.push_blob("sizes/app", &config).await;
    let ld = reg.push_blob("sizes/app", &layer).await;

    let lying_layer = oci_manifest(&cd, config.len(), &[(&ld, 999)], json!({}));
    let r = reg
        .put_manifest("sizes/app", "v1", OCI_MANIFEST, &lying_layer)
        .await;
    r.expect_error(&[400], &["MANIFEST_INVALID"]);
    let text = r.text();
    assert!(
        text.contains("layers[0]") && text.contains("999") && text.contains("1000"),
        "the refusal must name the descriptor and both sizes: {text}"
    );

    let lying_config = oci_manifest(&cd, 41, &[(&ld, layer.len())], json!({}));
    let r = reg
        .put_manifest("sizes/app", "v1", OCI_MANIFEST, &lying_config)
        .await;
    r.expect_error(&[400], &["MANIFEST_INVALID"]);
    assert!(r.text().contains("config"), "{}", r.text());

    reg.get_manifest("sizes/app", "v1")
        .await
        .expect_error(&[404], &["MANIFEST_UNKNOWN"]);
    let honest = oci_manifest(&cd, config.len(), &[(&ld, layer.len())], json!({}));
    reg.push_manifest("sizes/app", "v1", OCI_MANIFEST, &honest)
        .await;
}
