//! Proxy-cache projects (issue 11) against a real upstream: CNCF Distribution 2.8 (Debian
//! `docker-registry`) with TLS and htpasswd, standing in for Docker Hub with a `library/`
//! namespace. Berth's project `hub` proxies it; skopeo, podman and `ctr --hosts-dir` (Berth
//! as a containerd mirror with `override_path`) pull through it; two concurrent cold pulls
//! make one upstream GET per blob (counted in Distribution's access log); a tag moved
//! upstream is seen after revalidation; corrupt upstream bytes never become a blob; pushes
//! are refused; and with the upstream stopped the same pulls succeed from the cache.
//! A second test has the Docker engine (a private dockerd, tests/common/docker.rs) pull
//! through `hub` over TLS it verifies (Berth in a network namespace on a non-loopback
//! address, its CA in dockerd's certs.d), then `docker rmi` and pull again from the cache
//! with the upstream stopped.

mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::containerd::Containerd;
use common::distribution::{Distribution, PASSWORD, USER};
use common::docker::{Dockerd, NetNs, NsBerth, require_tools, text};
use common::{Berth, CmdOutput, berth_bin, need, run_cmd, sha256_digest};

const TIMEOUT: Duration = Duration::from_secs(180);
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// What these tests ask of the upstream beyond [`Distribution`]'s own methods.
impl Distribution {
    /// How many `GET`s of blob `digest` of `repo` the upstream answered.
    fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        self.access_log().matches(&needle).count()
    }

    /// The file Distribution keeps blob `digest` in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `skopeo copy SRC docker://HOST/REPO` with the upstream's credentials.
    fn push(&self, src: &str, repo_tag: &str) {
        skopeo(&[
            "copy",
            "--dest-cert-dir",
            &p(&self.cert_dir()),
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
            src,
            &format!("docker://{}/{repo_tag}", self.host),
        ])
        .ok();
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn skopeo(args: &[&str]) -> CmdOutput {
    need("skopeo");
    run_cmd(Command::new("skopeo").args(args), TIMEOUT)
}

/// podman with all its state in a temporary directory.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        need("podman");
        let dir = tempfile::Builder::new()
            .prefix("bpxy")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("xdg")).unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                d.join("runroot").display(),
                d.join("root").display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("auth.json"), "{\"auths\": {}}\n").unwrap();
        Podman { dir }
    }

    fn run(&self, args: &[&str]) -> CmdOutput {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--events-backend",
                "none",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        run_cmd(&mut cmd, TIMEOUT)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The digest Berth serves for `repo:reference` (anonymous `GET`).
fn served_digest(
    rt: &tokio::runtime::Runtime,
    berth: &Berth,
    repo: &str,
    reference: &str,
) -> String {
    rt.block_on(async {
        let resp = berth
            .anon_client()
            .get(format!("{}/v2/{repo}/manifests/{reference}", berth.url()))
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "GET {repo}:{reference}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(digest.as_deref(), Some(sha256_digest(&body).as_str()));
        sha256_digest(&body)
    })
}

/// Random-looking bytes (a layer no other image shares).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn skopeo_pull(berth: &Berth, repo_tag: &str, to: &Path) -> CmdOutput {
    skopeo(&[
        "copy",
        "--src-cert-dir",
        &p(&berth.cert_dir()),
        &format!("docker://{}/{repo_tag}", berth.host()),
        &format!("dir:{}", p(to)),
    ])
}

/// containerd's `--hosts-dir` making Berth's project `hub` a mirror of the upstream, as
/// `berth trust HOST --mirror-of URL --project hub` writes it.
fn mirror_hosts_dir(berth: &Berth, dist: &Distribution, under: &Path) -> PathBuf {
    let dir = under.join("hosts.d");
    let out = run_cmd(
        Command::new(berth_bin())
            .args(["trust", &berth.host(), "--ca"])
            .arg(berth.ca_path())
            .arg("--docker-dir")
            .arg(under.join("docker.d"))
            .arg("--containerd-dir")
            .arg(&dir)
            .args([
                "--mirror-of",
                &format!("https://{}", dist.host),
                "--project",
                "hub",
            ]),
        Duration::from_secs(30),
    )
    .ok();
    let written = std::fs::read_to_string(dir.join(&dist.host).join("hosts.toml")).unwrap();
    assert!(
        written.contains("override_path = true")
            && written.contains(&format!("[host.\"https://{}/v2/hub\"]", berth.host()))
            && written.starts_with(&format!("server = \"https://{}\"", dist.host))
            && out.stdout.contains(&written),
        "berth trust --mirror-of wrote:\n{written}\nprinted:\n{}",
        out.stdout
    );
    dir
}

fn ctr_pull(ctd: &Containerd, hosts: &Path, image: &str) -> CmdOutput {
    ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        &p(hosts),
        "--snapshotter",
        "native",
        image,
    ])
}

#[test]
fn proxy_project_caches_pulls_and_serves_them_with_the_upstream_down() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let mut dist = Distribution::start(true);

    // The upstream: a real image (for podman and ctr) as library/img:v1 and :latest, and
    // single-layer images no other test shares.
    let img = fixtures::image_layout(&tmp.path().join("img"), "v1");
    dist.push(&img.oci_ref(), "library/img:v1");
    dist.push(&img.oci_ref(), "library/img:latest");
    let twin_layer = noise(6 << 20, 1);
    let twin = common::one_layer_oci_layout(&tmp.path().join("twin"), "v1", &twin_layer);
    dist.push(&twin, "library/twin:v1");
    let bad_layer = noise(3 << 20, 2);
    let bad = common::one_layer_oci_layout(&tmp.path().join("bad"), "v1", &bad_layer);
    dist.push(&bad, "library/bad:v1");

    // A one-second revalidation window (`[proxy] revalidate_secs`, default 3): the moved
    // tag below is seen after a two-second wait only because the setting is honoured.
    let berth = Berth::start_with(&["--proxy-revalidate-secs", "1"]);
    let admin = berth.client();
    rt.block_on(async {
        let ca = std::fs::read_to_string(dist.ca()).unwrap();
        let r = admin
            .post(format!("{}/api/v1/registries", berth.url()))
            .json(&serde_json::json!({
                "name": "up", "url": format!("https://{}", dist.host),
                "username": USER, "secret": PASSWORD, "ca_pem": ca,
            }))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "add registry: {}",
            r.text().await.unwrap()
        );
        let r = admin
            .post(format!("{}/api/v1/projects", berth.url()))
            .json(&serde_json::json!({"name": "hub", "public": true, "proxy": "up"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["proxy"], "up");

        // Pushes and deletes into a proxy project are refused, naming why.
        let r = admin
            .post(format!("{}/v2/hub/library/img/blobs/uploads/", berth.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        assert!(text.contains("proxy cache of the registry up"), "{text}");
        let r = admin
            .delete(format!("{}/v2/hub/library/img/manifests/v1", berth.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    });

    // The CLI makes proxy projects too (on the data directory).
    let out = run_cmd(
        Command::new(berth_bin())
            .args(["project", "create", "hub2", "--proxy", "up", "--data"])
            .arg(berth.data.path()),
        Duration::from_secs(60),
    )
    .ok();
    assert!(
        out.stdout.contains("proxy cache of registry up"),
        "{}",
        out.stdout
    );
    let out = run_cmd(
        Command::new(berth_bin())
            .args(["project", "create", "hub3", "--proxy", "nowhere", "--data"])
            .arg(berth.data.path()),
        Duration::from_secs(60),
    );
    assert!(
        !out.success() && out.stderr.contains("nowhere"),
        "{}",
        out.stderr
    );

    // Two concurrent cold pulls of one image: one upstream GET per blob.
    let twin_dirs = [tmp.path().join("twin-a"), tmp.path().join("twin-b")];
    std::thread::scope(|s| {
        let pulls: Vec<_> = twin_dirs
            .iter()
            .map(|d| s.spawn(|| skopeo_pull(&berth, "hub/library/twin:v1", d)))
            .collect();
        for h in pulls {
            h.join().unwrap().ok();
        }
    });
    // The layer as the upstream stores it (skopeo compresses it on the way): the largest
    // file of skopeo's dir: copy, named by its digest.
    let largest = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max_by_key(|f| std::fs::metadata(f).unwrap().len())
            .unwrap()
    };
    let twin_file = largest(&twin_dirs[0]);
    let twin_bytes = std::fs::read(&twin_file).unwrap();
    let twin_digest = sha256_digest(&twin_bytes);
    assert_eq!(
        &twin_digest[7..],
        twin_file.file_name().unwrap().to_str().unwrap()
    );
    assert!(std::fs::read(largest(&twin_dirs[1])).unwrap() == twin_bytes);
    assert_eq!(
        dist.blob_gets("library/twin", &twin_digest),
        1,
        "upstream access log:\n{}",
        dist.access_log()
    );

    // skopeo, podman and ctr (Berth as containerd's mirror) pull the real image.
    skopeo_pull(&berth, "hub/library/img:v1", &tmp.path().join("img-1")).ok();
    let podman = Podman::new();
    let podman_pull = || {
        podman
            .run(&[
                "pull",
                "--cert-dir",
                &p(&berth.cert_dir()),
                &format!("{}/hub/library/img:v1", berth.host()),
            ])
            .ok();
    };
    podman_pull();
    let ctd = Containerd::start();
    let hosts = mirror_hosts_dir(&berth, &dist, tmp.path());
    let upstream_ref = format!("{}/library/img:v1", dist.host);
    ctr_pull(&ctd, &hosts, &upstream_ref).ok();
    for l in img.layer_digests() {
        assert_eq!(
            dist.blob_gets("library/img", &l),
            1,
            "layer {l} fetched more than once"
        );
    }

    // A tag moved upstream is seen once the revalidation window has passed.
    assert_eq!(
        served_digest(&rt, &berth, "hub/library/img", "latest"),
        img.manifest_digest()
    );
    let multi = fixtures::multi_arch_layout(&tmp.path().join("multi"), "latest");
    skopeo(&[
        "copy",
        "--all",
        "--dest-cert-dir",
        &p(&dist.cert_dir()),
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        &multi.oci_ref(),
        &format!("docker://{}/library/img:latest", dist.host),
    ])
    .ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        served_digest(&rt, &berth, "hub/library/img", "latest"),
        multi.manifest_digest()
    );
    // A client pulls ONE platform of the index: the index stays pending (the other
    // platform is not local), which must survive a restart below.
    let index: serde_json::Value = serde_json::from_slice(&get_ok(
        &rt,
        &berth,
        "hub/library/img",
        "manifests",
        multi.manifest_digest(),
    ))
    .unwrap();
    let platform = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let child: serde_json::Value = serde_json::from_slice(&get_ok(
        &rt,
        &berth,
        "hub/library/img",
        "manifests",
        &platform,
    ))
    .unwrap();
    let mut platform_blobs = vec![child["config"]["digest"].as_str().unwrap().to_owned()];
    for l in child["layers"].as_array().unwrap() {
        platform_blobs.push(l["digest"].as_str().unwrap().to_owned());
    }
    for b in &platform_blobs {
        let bytes = get_ok(&rt, &berth, "hub/library/img", "blobs", b);
        assert_eq!(&sha256_digest(&bytes), b);
    }

    // Corrupt bytes upstream: the client never gets the whole blob, and nothing is kept.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        &p(&dist.cert_dir()),
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("docker://{}/library/bad:v1", dist.host),
    ])
    .ok();
    let manifest: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    let bad_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let mut wrong = std::fs::read(dist.blob_file(&bad_digest)).unwrap();
    wrong[1000] ^= 0xff;
    std::fs::write(dist.blob_file(&bad_digest), &wrong).unwrap();
    rt.block_on(async {
        for _ in 0..2 {
            let got = async {
                let r = berth
                    .anon_client()
                    .get(format!(
                        "{}/v2/hub/library/bad/blobs/{bad_digest}",
                        berth.url()
                    ))
                    .send()
                    .await?;
                r.error_for_status()?.bytes().await
            }
            .await;
            assert!(got.is_err(), "a corrupt upstream blob was served whole");
        }
    });
    let kept = berth
        .data
        .path()
        .join("blobs/sha256")
        .join(&bad_digest[7..9])
        .join(&bad_digest[7..]);
    assert!(
        !kept.exists(),
        "a corrupt blob was stored at {}",
        kept.display()
    );

    // The upstream goes away: the same pulls are served from the cache (after the tag's
    // revalidation window, so the proxy does try the upstream first).
    dist.stop();
    std::thread::sleep(Duration::from_secs(2));
    skopeo_pull(&berth, "hub/library/img:v1", &tmp.path().join("img-2")).ok();
    skopeo_pull(&berth, "hub/library/twin:v1", &tmp.path().join("twin-c")).ok();
    podman.run(&["rmi", "-a", "-f"]).ok();
    podman_pull();
    ctd.ctr(&["images", "rm", &upstream_ref]).ok();
    ctr_pull(&ctd, &hosts, &upstream_ref).ok();
    assert_eq!(
        served_digest(&rt, &berth, "hub/library/img", "latest"),
        multi.manifest_digest()
    );

    // Cached content is ordinary local content: the project's quota usage counts it.
    rt.block_on(async {
        let policy: serde_json::Value = admin
            .get(format!("{}/api/v1/projects/hub/policy", berth.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let usage = policy["usage_bytes"].as_u64().unwrap();
        assert!(
            usage >= twin_bytes.len() as u64 && policy["repositories"].as_u64() >= Some(2),
            "{policy}"
        );
    });

    // Berth restarts with the upstream still down: the index (pending, since only one
    // platform was pulled) is still served by tag, and the pulled platform with its blobs.
    let data = berth.kill();
    let berth = Berth::start_in(data, &[]);
    assert_eq!(
        served_digest(&rt, &berth, "hub/library/img", "latest"),
        multi.manifest_digest()
    );
    assert_eq!(
        served_digest(&rt, &berth, "hub/library/img", multi.manifest_digest()),
        multi.manifest_digest()
    );
    assert_eq!(
        served_digest(&rt, &berth, "hub/library/img", &platform),
        platform
    );
    for b in &platform_blobs {
        let bytes = get_ok(&rt, &berth, "hub/library/img", "blobs", b);
        assert_eq!(&sha256_digest(&bytes), b);
    }
}

/// The body of an anonymous `GET /v2/{repo}/{kind}/{reference}`, which must succeed.
fn get_ok(
    rt: &tokio::runtime::Runtime,
    berth: &Berth,
    repo: &str,
    kind: &str,
    reference: &str,
) -> Vec<u8> {
    rt.block_on(async {
        let resp = berth
            .anon_client()
            .get(format!("{}/v2/{repo}/{kind}/{reference}", berth.url()))
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "GET {repo}/{kind}/{reference}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        body.to_vec()
    })
}

// ---------------------------------------------------------------------------------------
// The Docker engine through the proxy project, over TLS it verifies
// ---------------------------------------------------------------------------------------

/// Docker pulls through the proxy project as it runs in tests/interop_docker.rs: Berth
/// inside a network namespace on a non-loopback address (so Docker checks its certificate;
/// no insecure-registry setting anywhere), its CA trusted through the private dockerd's
/// `certs.d`. The upstream Distribution listens on the host side of the veth pair, where
/// Berth reaches it across the namespace boundary. Before the CA is trusted the pull fails
/// on the certificate; once trusted it succeeds with one upstream fetch per layer; then the
/// upstream is stopped and, after `docker rmi`, the same pull succeeds from the cache.
#[test]
fn docker_engine_pulls_through_proxy_project_and_from_cache_with_upstream_down() {
    require_tools();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    // Drop order is the reverse of declaration: dockerd, Berth, the upstream, the ns.
    let ns = NetNs::create();
    let mut dist = Distribution::start_on(true, &ns.host_ip.to_string());
    let img = fixtures::image_layout(&tmp.path().join("img"), "v1");
    dist.push(&img.oci_ref(), "library/img:v1");
    let config_digest = img.images[0].config.digest.clone();

    // A revalidation window of one second (`[proxy] revalidate_secs`, here by flag).
    let berth = NsBerth::start(&ns, 5443, &["--proxy-revalidate-secs", "1"]);
    rt.block_on(async {
        let admin = berth.client();
        let r = admin
            .post(format!("{}/api/v1/registries", berth.url()))
            .json(&serde_json::json!({
                "name": "up", "url": format!("https://{}", dist.host),
                "username": USER, "secret": PASSWORD,
                "ca_pem": std::fs::read_to_string(dist.ca()).unwrap(),
            }))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "add registry: {}",
            r.text().await.unwrap()
        );
        let r = admin
            .post(format!("{}/api/v1/projects", berth.url()))
            .json(&serde_json::json!({"name": "hub", "public": true, "proxy": "up"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    });

    let dockerd = Dockerd::start();
    let image = format!("{}/hub/library/img:v1", berth.host);
    // Not trusted yet: Docker verifies Berth's certificate and refuses it.
    let o = dockerd.run(&["pull", &image]);
    let msg = text(&o);
    assert!(
        !o.status.success() && msg.contains("x509: certificate signed by unknown authority"),
        "docker pull before trusting the CA:\n{msg}"
    );
    dockerd.trust(&berth.host, &berth.ca_path());
    let inspect_id = || {
        dockerd
            .must(&["image", "inspect", &image, "--format", "{{.Id}}"])
            .trim()
            .to_owned()
    };
    dockerd.must(&["pull", &image]);
    assert_eq!(inspect_id(), config_digest);
    for l in img.layer_digests() {
        assert_eq!(dist.blob_gets("library/img", &l), 1, "layer {l}");
    }

    // The upstream goes away; past the tag's revalidation window the proxy tries it, fails,
    // and serves the cached manifest and blobs.
    dist.stop();
    std::thread::sleep(Duration::from_secs(2));
    dockerd.must(&["rmi", &image]);
    let gone = dockerd.run(&["image", "inspect", &image]);
    assert!(
        !gone.status.success(),
        "{image} still present after docker rmi"
    );
    dockerd.must(&["pull", &image]);
    assert_eq!(inspect_id(), config_digest);
}
