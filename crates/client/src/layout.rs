//! On-disk image formats: the OCI image layout (`oci:DIR[:tag]`) and Docker's
//! `docker save` tarball (`docker-archive:FILE`). Blobs are streamed, never held whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use berth_proto::media_types::*;
use berth_proto::{Digest, Hasher};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::error::{ClientError, Result};
use crate::image::{Descriptor, FetchedManifest};
use crate::registry::{ByteStream, Verified};

/// The annotation naming a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn io(ctx: impl std::fmt::Display, e: std::io::Error) -> ClientError {
    ClientError::io(ctx.to_string(), e)
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    pub dir: PathBuf,
}

impl OciLayout {
    /// Open an existing layout, or create one.
    pub fn create(dir: &Path) -> Result<OciLayout> {
        std::fs::create_dir_all(dir.join("blobs").join("sha256"))
            .map_err(|e| io(format!("creating {}", dir.display()), e))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| io(format!("writing {}", marker.display()), e))?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            write_json(
                &index,
                &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
            )?;
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// Open an existing layout (it must have `oci-layout` and `index.json`).
    pub fn open(dir: &Path) -> Result<OciLayout> {
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            return Err(ClientError::Config(format!(
                "{} is not an OCI image layout (no oci-layout / index.json)",
                dir.display()
            )));
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// Whether the blob is present with the right size.
    pub fn has_blob(&self, d: &Descriptor) -> bool {
        std::fs::metadata(self.blob_path(&d.digest)).is_ok_and(|m| m.len() == d.size)
    }

    /// Download a blob from a registry into the layout, resumably: the bytes go to
    /// `blobs/ALG/.partial-HEX` (kept when the transfer is interrupted, so the next attempt
    /// or the next run continues with `Range`), verified, then renamed into place. A lock
    /// on `.partial-HEX.lock` keeps concurrent downloads of the same blob apart.
    pub async fn download_blob(
        &self,
        client: &crate::RegistryClient,
        image: &crate::ImageRef,
        desc: &Descriptor,
    ) -> Result<()> {
        let path = self.blob_path(&desc.digest);
        let dir = path.parent().expect("parent").to_path_buf();
        let partial = dir.join(format!(".partial-{}", desc.digest.hex()));
        let lock_path = dir.join(format!(".partial-{}.lock", desc.digest.hex()));
        let lp = lock_path.clone();
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            use std::os::unix::fs::MetadataExt;
            std::fs::create_dir_all(lp.parent().expect("parent"))?;
            loop {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lp)?;
                f.lock()?;
                // The holder before us removes the lock file when done: only a lock on
                // the file still at that path counts.
                let (mine, there) = (f.metadata()?, std::fs::metadata(&lp));
                if there.is_ok_and(|t| t.ino() == mine.ino() && t.dev() == mine.dev()) {
                    return Ok(f);
                }
            }
        })
        .await
        .map_err(|e| io("locking", std::io::Error::other(e)))?
        .map_err(|e| io(format!("locking {}", lock_path.display()), e))?;
        if !self.has_blob(desc) {
            client.fetch_blob_to_file(image, desc, &partial).await?;
            std::fs::rename(&partial, &path)
                .map_err(|e| io(format!("renaming into {}", path.display()), e))?;
        }
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        Ok(())
    }

    /// Write a blob from a stream (verified against `desc`), atomically.
    pub async fn write_blob(&self, desc: &Descriptor, stream: ByteStream) -> Result<()> {
        let path = self.blob_path(&desc.digest);
        let dir = path.parent().expect("parent").to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(".tmp-{}-{}", desc.digest.hex(), std::process::id()));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io(format!("creating {}", tmp.display()), e))?;
        let mut s = Verified::new(stream, desc.clone(), format!("blob {}", desc.digest));
        while let Some(chunk) = s.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    drop(f);
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(if e.kind() == std::io::ErrorKind::InvalidData {
                        ClientError::Integrity(e.to_string())
                    } else {
                        ClientError::Connect(format!("blob {}: {e}", desc.digest))
                    });
                }
            };
            f.write_all(&chunk)
                .await
                .map_err(|e| io(format!("writing {}", tmp.display()), e))?;
        }
        f.flush().await.map_err(|e| io("flushing", e))?;
        drop(f);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io(format!("renaming into {}", path.display()), e))?;
        Ok(())
    }

    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::sha256(bytes);
        let path = self.blob_path(&d);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).map_err(|e| io(format!("writing {}", tmp.display()), e))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| io(format!("writing {}", path.display()), e))?;
        }
        Ok(d)
    }

    fn index_value(&self) -> Result<Value> {
        let p = self.dir.join("index.json");
        let b = std::fs::read(&p).map_err(|e| io(format!("reading {}", p.display()), e))?;
        serde_json::from_slice(&b)
            .map_err(|e| ClientError::Config(format!("{}: not valid JSON: {e}", p.display())))
    }

    /// The descriptors in `index.json`.
    pub fn manifests(&self) -> Result<Vec<Descriptor>> {
        let v = self.index_value()?;
        let list = v.get("manifests").cloned().unwrap_or(json!([]));
        serde_json::from_value(list).map_err(|e| {
            ClientError::Config(format!(
                "{}/index.json: bad manifests: {e}",
                self.dir.display()
            ))
        })
    }

    /// The manifest named `tag` (annotation `org.opencontainers.image.ref.name`), or the only
    /// one when `tag` is `None`.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor> {
        let all = self.manifests()?;
        let names = |d: &Descriptor| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
        };
        match tag {
            Some(t) => all
                .iter()
                .find(|d| names(d).as_deref() == Some(t))
                .cloned()
                .ok_or_else(|| {
                    let have: Vec<String> = all.iter().filter_map(names).collect();
                    ClientError::NotFound(format!(
                        "{} has no image tagged {t:?} (it has: {})",
                        self.dir.display(),
                        if have.is_empty() {
                            "no tags".into()
                        } else {
                            have.join(", ")
                        }
                    ))
                }),
            None => match all.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(ClientError::NotFound(format!(
                    "{} holds no image",
                    self.dir.display()
                ))),
                _ => Err(ClientError::Config(format!(
                    "{} holds several images; name one as oci:{}:TAG",
                    self.dir.display(),
                    self.dir.display()
                ))),
            },
        }
    }

    /// Record `desc` in `index.json` under `tag` (replacing that tag's previous entry).
    pub fn add_ref(&self, desc: &Descriptor, tag: Option<&str>) -> Result<()> {
        let mut v = self.index_value()?;
        let mut list = self.manifests()?;
        let mut d = desc.clone();
        if let Some(t) = tag {
            list.retain(|x| {
                x.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(String::as_str)
                    != Some(t)
            });
            d.annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(REF_NAME.to_string(), t.to_string());
        } else if list.iter().any(|x| x.digest == d.digest) {
            return Ok(());
        }
        list.push(d);
        v["manifests"] = serde_json::to_value(list).expect("json");
        if v.get("schemaVersion").is_none() {
            v["schemaVersion"] = json!(2);
        }
        write_json(&self.dir.join("index.json"), &v)
    }

    pub fn read_manifest(&self, desc: &Descriptor) -> Result<FetchedManifest> {
        let p = self.blob_path(&desc.digest);
        let b = std::fs::read(&p).map_err(|e| io(format!("reading {}", p.display()), e))?;
        let got = Digest::of(desc.digest.algorithm(), &b);
        if got != desc.digest {
            return Err(ClientError::Integrity(format!(
                "{}: digest mismatch (content is {got}); the layout is corrupt",
                p.display()
            )));
        }
        let mt = Some(desc.media_type.as_str()).filter(|m| !m.is_empty());
        let mut m = FetchedManifest::from_bytes(mt, Bytes::from(b))?;
        m.digest = desc.digest.clone();
        Ok(m)
    }

    pub async fn blob_stream(&self, desc: &Descriptor) -> Result<ByteStream> {
        crate::registry::file_stream(&self.blob_path(&desc.digest), desc).await
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("json"))
        .map_err(|e| io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(format!("writing {}", path.display()), e))
}

// ---------------------------------------------------------------------------
// docker-archive
// ---------------------------------------------------------------------------

fn layer_media_type(head: &[u8], oci: bool) -> &'static str {
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let zst = head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    match (oci, gz, zst) {
        (_, _, true) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (true, true, _) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (true, false, _) => "application/vnd.oci.image.layer.v1.tar",
        (false, true, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        (false, false, _) => "application/vnd.docker.image.rootfs.diff.tar",
    }
}

fn normalize_tar_path(p: &str) -> String {
    p.trim_start_matches("./").to_string()
}

/// Import one image of a `docker save` tarball into `layout` (streaming each file section),
/// tagged `tag_in_layout`. `want` picks the image by one of its `RepoTags` (default: the
/// first). Returns the manifest.
pub fn docker_archive_to_layout(
    archive: &Path,
    want: Option<&str>,
    layout: &OciLayout,
    tag_in_layout: &str,
) -> Result<FetchedManifest> {
    let ctx = |what: &str| format!("{what} {}", archive.display());
    let file = File::open(archive).map_err(|e| io(ctx("opening"), e))?;
    let mut ar = tar::Archive::new(file);
    let mut entries: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in ar.entries().map_err(|e| io(ctx("reading"), e))? {
        let e = e.map_err(|e| io(ctx("reading"), e))?;
        if e.header().entry_type().is_file() {
            let name = e.path().map_err(|e| io(ctx("reading"), e))?;
            entries.insert(
                normalize_tar_path(&name.to_string_lossy()),
                (e.raw_file_position(), e.size()),
            );
        }
    }
    let mut f = File::open(archive).map_err(|e| io(ctx("opening"), e))?;
    let mut read_small = |name: &str| -> Result<Vec<u8>> {
        let &(off, size) = entries
            .get(&normalize_tar_path(name))
            .ok_or_else(|| ClientError::Config(format!("{}: has no {name}", archive.display())))?;
        if size > 64 << 20 {
            return Err(ClientError::Config(format!(
                "{}: {name} is too large",
                archive.display()
            )));
        }
        f.seek(SeekFrom::Start(off))
            .map_err(|e| io(ctx("reading"), e))?;
        let mut buf = vec![0u8; size as usize];
        f.read_exact(&mut buf).map_err(|e| io(ctx("reading"), e))?;
        Ok(buf)
    };
    let mf: Value = serde_json::from_slice(&read_small("manifest.json")?).map_err(|e| {
        ClientError::Config(format!(
            "{}: manifest.json is not JSON: {e}",
            archive.display()
        ))
    })?;
    let images = mf.as_array().cloned().unwrap_or_default();
    let img = match want {
        Some(w) => images.iter().find(|i| {
            i.get("RepoTags")
                .and_then(|t| t.as_array())
                .is_some_and(|t| {
                    t.iter().any(|x| {
                        x.as_str()
                            .is_some_and(|x| x == w || x.ends_with(&format!("/{w}")))
                    })
                })
        }),
        None => images.first(),
    }
    .ok_or_else(|| {
        ClientError::NotFound(format!(
            "{}: no image{} in manifest.json",
            archive.display(),
            want.map(|w| format!(" tagged {w}")).unwrap_or_default()
        ))
    })?
    .clone();
    let config_name = img.get("Config").and_then(|c| c.as_str()).ok_or_else(|| {
        ClientError::Config(format!(
            "{}: manifest.json entry has no Config",
            archive.display()
        ))
    })?;
    let config = read_small(config_name)?;
    let config_digest = layout.write_blob_bytes(&config)?;
    let layer_names: Vec<String> = img
        .get("Layers")
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut f = File::open(archive).map_err(|e| io(ctx("opening"), e))?;
    let mut layers = Vec::new();
    let mut any_zstd = false;
    for name in &layer_names {
        let &(off, size) = entries.get(&normalize_tar_path(name)).ok_or_else(|| {
            ClientError::Config(format!("{}: has no layer {name}", archive.display()))
        })?;
        f.seek(SeekFrom::Start(off))
            .map_err(|e| io(ctx("reading"), e))?;
        let tmp_path = layout.dir.join("blobs").join("sha256").join(".import.tmp");
        let mut tmp = File::create(&tmp_path).map_err(|e| io("creating temp layer", e))?;
        let mut hasher = Hasher::new(berth_proto::Algorithm::Sha256);
        let mut left = size;
        let mut buf = vec![0u8; 256 * 1024];
        let mut head = Vec::new();
        while left > 0 {
            let n = f
                .read(&mut buf[..left.min(256 * 1024) as usize])
                .map_err(|e| io(ctx("reading"), e))?;
            if n == 0 {
                return Err(ClientError::Config(format!(
                    "{}: truncated",
                    archive.display()
                )));
            }
            if head.len() < 4 {
                head.extend_from_slice(&buf[..n.min(4)]);
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| io("writing temp layer", e))?;
            left -= n as u64;
        }
        drop(tmp);
        let d = hasher.finish();
        std::fs::rename(&tmp_path, layout.blob_path(&d)).map_err(|e| io("storing layer", e))?;
        any_zstd |= head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        layers.push((d, size, head));
    }
    let oci = any_zstd;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": if oci { OCI_MANIFEST } else { DOCKER_MANIFEST },
        "config": {
            "mediaType": if oci { OCI_CONFIG } else { DOCKER_CONFIG },
            "size": config.len(),
            "digest": config_digest.to_string(),
        },
        "layers": layers.iter().map(|(d, size, head)| json!({
            "mediaType": layer_media_type(head, oci),
            "size": size,
            "digest": d.to_string(),
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec_pretty(&manifest).expect("json");
    let digest = layout.write_blob_bytes(&bytes)?;
    let m = FetchedManifest {
        media_type: if oci { OCI_MANIFEST } else { DOCKER_MANIFEST }.to_string(),
        digest,
        bytes: bytes.into(),
    };
    layout.add_ref(&m.descriptor(), Some(tag_in_layout))?;
    Ok(m)
}

/// Write the image manifest `m` (whose blobs are in `layout`) as a `docker save` tarball
/// loadable by `docker load`, tagged `repo_tag` (e.g. `reg:5000/app:v1`).
pub fn layout_to_docker_archive(
    layout: &OciLayout,
    m: &FetchedManifest,
    repo_tag: Option<&str>,
    out: &Path,
) -> Result<()> {
    let shape = m.shape()?;
    let config = shape.config.ok_or_else(|| {
        ClientError::Config("a docker-archive can only hold an image manifest (no config)".into())
    })?;
    let tmp = out.with_extension("tar.tmp");
    let file = File::create(&tmp).map_err(|e| io(format!("creating {}", tmp.display()), e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let name = |d: &Digest| format!("blobs/{}/{}", d.algorithm().as_str(), d.hex());
    let add_file =
        |b: &mut tar::Builder<std::io::BufWriter<File>>, path: &str, src: &Path| -> Result<()> {
            let f = File::open(src).map_err(|e| io(format!("opening {}", src.display()), e))?;
            let len = f.metadata().map_err(|e| io("stat", e))?.len();
            let mut h = tar::Header::new_gnu();
            h.set_size(len);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, f)
                .map_err(|e| io(format!("writing {}", out.display()), e))
        };
    let mut seen = Vec::new();
    for d in std::iter::once(&config).chain(shape.layers.iter()) {
        if seen.contains(&d.digest) {
            continue;
        }
        seen.push(d.digest.clone());
        add_file(&mut b, &name(&d.digest), &layout.blob_path(&d.digest))?;
    }
    let manifest = json!([{
        "Config": name(&config.digest),
        "RepoTags": repo_tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
        "Layers": shape.layers.iter().map(|l| name(&l.digest)).collect::<Vec<_>>(),
    }]);
    let body = serde_json::to_vec(&manifest).expect("json");
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "manifest.json", &body[..])
        .map_err(|e| io(format!("writing {}", out.display()), e))?;
    let w = b
        .into_inner()
        .map_err(|e| io(format!("writing {}", out.display()), e))?;
    let f = w
        .into_inner()
        .map_err(|e| io(format!("writing {}", out.display()), e.into_error()))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, out).map_err(|e| io(format!("writing {}", out.display()), e))
}
