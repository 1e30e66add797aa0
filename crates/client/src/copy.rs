//! Copy images between registries, OCI layouts and `docker save` tarballs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use berth_proto::{Digest, Reference};
use futures_util::{StreamExt, TryStreamExt};

use crate::error::{ClientError, Result};
use crate::image::{Descriptor, FetchedManifest, Platform, select_platform};
use crate::layout::{OciLayout, docker_archive_to_layout, layout_to_docker_archive};
use crate::reference::ImageRef;
use crate::registry::{ByteStream, RegistryClient};

/// Where an image is: `REF` / `docker://REF`, `oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Registry(ImageRef),
    Layout {
        dir: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("oci:") {
            // The tag is after the last ':' if no '/' follows it.
            let (dir, tag) = match rest.rfind(':') {
                Some(i) if !rest[i + 1..].contains('/') && i > 0 => {
                    (&rest[..i], Some(rest[i + 1..].to_string()))
                }
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(ClientError::Config(format!(
                    "{s:?}: oci: needs a directory"
                )));
            }
            if let Some(t) = &tag {
                berth_proto::validate_tag(t).map_err(|e| ClientError::Config(e.to_string()))?;
            }
            return Ok(Location::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, reference) = match rest.split_once(':') {
                Some((p, r)) if !r.is_empty() => (p, Some(r.to_string())),
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(ClientError::Config(format!(
                    "{s:?}: docker-archive: needs a file"
                )));
            }
            return Ok(Location::DockerArchive {
                path: PathBuf::from(path),
                reference,
            });
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        Ok(Location::Registry(ImageRef::parse(r)?))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "{r}"),
            Location::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            Location::DockerArchive { path, reference } => {
                write!(f, "docker-archive:{}", path.display())?;
                if let Some(r) = reference {
                    write!(f, ":{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// Which manifests of an index to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    /// The whole index with every child.
    All,
    /// One platform's image manifest (the index is not copied).
    One(Platform),
}

#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Digest of the top manifest written at the destination.
    pub digest: Digest,
    pub media_type: String,
    pub blobs_copied: usize,
    pub blobs_skipped: usize,
    pub bytes_copied: u64,
}

enum Side {
    Registry(ImageRef),
    Layout(OciLayout, Option<String>),
}

struct Ctx<'a> {
    client: &'a RegistryClient,
    src: &'a Side,
    dst: &'a Side,
    mount_from: Option<String>,
    copied: AtomicUsize,
    skipped: AtomicUsize,
    bytes: AtomicU64,
}

impl Ctx<'_> {
    async fn src_manifest(&self, desc: &Descriptor) -> Result<FetchedManifest> {
        match self.src {
            Side::Registry(r) => {
                self.client
                    .get_manifest(r, &Reference::Digest(desc.digest.clone()))
                    .await
            }
            Side::Layout(l, _) => l.read_manifest(desc),
        }
    }

    async fn src_blob(&self, desc: &Descriptor) -> Result<ByteStream> {
        match self.src {
            Side::Registry(r) => self.client.blob_stream(r, desc).await,
            Side::Layout(l, _) => l.blob_stream(desc).await,
        }
    }

    async fn copy_blob(&self, desc: &Descriptor) -> Result<()> {
        let have = match self.dst {
            Side::Registry(r) => self.client.blob_exists(r, &desc.digest, true).await?,
            Side::Layout(l, _) => l.has_blob(desc),
        };
        if have {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let (Side::Registry(r), Side::Layout(l, _)) = (self.src, self.dst) {
            // Registry → layout: resumable (a partial file survives an interruption).
            l.download_blob(self.client, r, desc).await?;
            self.copied.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(desc.size, Ordering::Relaxed);
            return Ok(());
        }
        let stream = self.src_blob(desc).await?;
        match self.dst {
            Side::Registry(r) => {
                self.client
                    .push_blob(r, desc, stream, self.mount_from.as_deref())
                    .await?
            }
            Side::Layout(l, _) => l.write_blob(desc, stream).await?,
        }
        self.copied.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(desc.size, Ordering::Relaxed);
        Ok(())
    }

    async fn put_manifest(&self, m: &FetchedManifest, tag: Option<&str>) -> Result<()> {
        match self.dst {
            Side::Registry(r) => {
                let reference = match tag {
                    Some(t) => Reference::Tag(t.to_string()),
                    None => Reference::Digest(m.digest.clone()),
                };
                self.client.put_manifest(r, &reference, m).await?;
            }
            Side::Layout(l, _) => {
                l.write_blob_bytes(&m.bytes)?;
                if let Some(t) = tag {
                    l.add_ref(&m.descriptor(), Some(t))?;
                }
            }
        }
        Ok(())
    }

    /// Copy an image manifest's blobs (in parallel) and then the manifest itself.
    async fn copy_image(&self, m: &FetchedManifest, tag: Option<&str>) -> Result<()> {
        let shape = m.shape()?;
        let mut blobs: Vec<Descriptor> = Vec::new();
        for d in shape.config.iter().chain(shape.layers.iter()) {
            if d.urls.as_ref().is_some_and(|u| !u.is_empty())
                && (d.media_type.contains("nondistributable") || d.media_type.contains("foreign"))
            {
                continue;
            }
            if !blobs.iter().any(|b| b.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
        let parallel = self.client.options().parallel.max(1);
        let futs: Vec<_> = blobs.iter().map(|d| self.copy_blob(d)).collect();
        futures_util::stream::iter(futs)
            .buffer_unordered(parallel)
            .try_collect::<Vec<()>>()
            .await?;
        self.put_manifest(m, tag).await
    }

    fn copy_any<'b>(
        &'b self,
        m: &'b FetchedManifest,
        tag: Option<&'b str>,
    ) -> futures_util::future::BoxFuture<'b, Result<()>> {
        Box::pin(async move {
            if m.is_index() {
                let shape = m.shape()?;
                for child in &shape.manifests {
                    let cm = self.src_manifest(child).await?;
                    self.copy_any(&cm, None).await?;
                }
                self.put_manifest(m, tag).await
            } else {
                self.copy_image(m, tag).await
            }
        })
    }
}

/// Copy `src` to `dst`. Blobs are streamed (verified on the way) with bounded parallelism;
/// blobs already at the destination are skipped; within one registry blobs are mounted
/// across repositories.
pub async fn copy(
    client: &RegistryClient,
    src: &Location,
    dst: &Location,
    platforms: &Platforms,
) -> Result<CopyReport> {
    let mut _temps: Vec<tempfile::TempDir> = Vec::new();
    let src_side = match src {
        Location::Registry(r) => Side::Registry(r.clone()),
        Location::Layout { dir, tag } => Side::Layout(OciLayout::open(dir)?, tag.clone()),
        Location::DockerArchive { path, reference } => {
            let tmp = tempfile::tempdir().map_err(|e| ClientError::io("temp dir", e))?;
            let layout = OciLayout::create(tmp.path())?;
            let (p, r, l) = (path.clone(), reference.clone(), layout.clone());
            tokio::task::spawn_blocking(move || {
                docker_archive_to_layout(&p, r.as_deref(), &l, "import")
            })
            .await
            .map_err(|e| ClientError::Config(format!("import task: {e}")))??;
            _temps.push(tmp);
            Side::Layout(layout, Some("import".into()))
        }
    };
    let mut archive_out: Option<(PathBuf, Option<String>, OciLayout)> = None;
    let dst_side = match dst {
        Location::Registry(r) => Side::Registry(r.clone()),
        Location::Layout { dir, tag } => Side::Layout(OciLayout::create(dir)?, tag.clone()),
        Location::DockerArchive { path, reference } => {
            let tmp = tempfile::tempdir().map_err(|e| ClientError::io("temp dir", e))?;
            let layout = OciLayout::create(tmp.path())?;
            _temps.push(tmp);
            let repo_tag = reference.clone().or_else(|| match src {
                Location::Registry(r) => Some(r.familiar()),
                _ => None,
            });
            archive_out = Some((path.clone(), repo_tag, layout.clone()));
            Side::Layout(layout, Some("export".into()))
        }
    };
    let root = match &src_side {
        Side::Registry(r) => client.get_manifest(r, &r.reference()).await?,
        Side::Layout(l, tag) => l.read_manifest(&l.find(tag.as_deref())?)?,
    };
    // Pick the manifest to copy.
    let top = match platforms {
        Platforms::One(p) if root.is_index() => {
            let d = select_platform(&root.shape()?, p)?;
            match &src_side {
                Side::Registry(r) => {
                    client
                        .get_manifest(r, &Reference::Digest(d.digest.clone()))
                        .await?
                }
                Side::Layout(l, _) => l.read_manifest(&d)?,
            }
        }
        _ => root,
    };
    if archive_out.is_some() && top.is_index() {
        return Err(ClientError::Config(
            "a docker-archive holds one image, not an index: choose a platform (--platform)".into(),
        ));
    }
    let mount_from = match (&src_side, &dst_side) {
        (Side::Registry(s), Side::Registry(d))
            if s.registry == d.registry && s.repository != d.repository =>
        {
            Some(s.repository.clone())
        }
        _ => None,
    };
    let dst_tag: Option<String> = match &dst_side {
        Side::Registry(d) => match (&d.tag, &d.digest) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(dg)) => {
                if *dg != top.digest {
                    return Err(ClientError::Integrity(format!(
                        "destination digest {dg} does not match the image being copied ({})",
                        top.digest
                    )));
                }
                None
            }
            (None, None) => Some("latest".to_string()),
        },
        Side::Layout(_, tag) => Some(tag.clone().unwrap_or_else(|| match src {
            Location::Registry(r) => r.tag.clone().unwrap_or_else(|| "latest".into()),
            Location::Layout { tag: Some(t), .. } => t.clone(),
            _ => "latest".to_string(),
        })),
    };
    let ctx = Ctx {
        client,
        src: &src_side,
        dst: &dst_side,
        mount_from,
        copied: AtomicUsize::new(0),
        skipped: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
    };
    ctx.copy_any(&top, dst_tag.as_deref()).await?;
    if let Some((path, repo_tag, layout)) = archive_out {
        let m = top.clone();
        tokio::task::spawn_blocking(move || {
            layout_to_docker_archive(&layout, &m, repo_tag.as_deref(), &path)
        })
        .await
        .map_err(|e| ClientError::Config(format!("export task: {e}")))??;
    }
    Ok(CopyReport {
        digest: top.digest.clone(),
        media_type: top.media_type.clone(),
        blobs_copied: ctx.copied.load(Ordering::Relaxed),
        blobs_skipped: ctx.skipped.load(Ordering::Relaxed),
        bytes_copied: ctx.bytes.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("oci:/tmp/x:v1").unwrap(),
            Location::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Location::parse("oci:rel/dir").unwrap(),
            Location::Layout {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            Location::parse("docker-archive:/t/a.tar:reg:5000/app:v1").unwrap(),
            Location::DockerArchive {
                path: "/t/a.tar".into(),
                reference: Some("reg:5000/app:v1".into())
            }
        );
        assert!(
            matches!(Location::parse("docker://h:1/a:b").unwrap(), Location::Registry(r) if r.registry == "h:1")
        );
        assert!(
            matches!(Location::parse("nginx").unwrap(), Location::Registry(r) if r.repository == "library/nginx")
        );
        assert!(Location::parse("oci:").is_err());
    }
}
