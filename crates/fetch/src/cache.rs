//! The local content-addressed blob cache.
//!
//! ```text
//! CACHE/
//! ├── blobs/sha256/<hex>        complete blobs, verified (size and digest) before they
//! │                             are renamed here; never rewritten
//! ├── partial/sha256-<hex>      an interrupted download, resumed with `Range`
//! └── locks/sha256-<hex>        flock(2) so concurrent fetches download a blob once
//! ```
//!
//! Downloads go through [`berth_client::RegistryClient::fetch_blob_to_file`], which resumes
//! a partial file with `Range`, verifies size and digest, fsyncs, and deletes the file on a
//! mismatch. Only then is the file renamed into `blobs/` (and the directory fsynced), so a
//! blob in `blobs/` is always complete and correct.

use std::path::{Path, PathBuf};

use berth_client::{Descriptor, DownloadObserver, ImageRef, RegistryClient};
use berth_proto::Digest;

/// Where a blob came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ensured {
    /// It was already in the cache: nothing was transferred.
    pub cached: bool,
    /// Bytes of a previous partial download that were reused (resumed with `Range`).
    pub resumed_from: u64,
}

/// A blob cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// `/var/lib/berth/cache` as root, else `$XDG_CACHE_HOME/berth` or `~/.cache/berth`.
pub fn default_cache_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/berth/cache");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("berth");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("berth"),
        None => std::env::temp_dir().join("berth-cache"),
    }
}

fn io_err(what: String, e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context(what)
}

impl BlobCache {
    /// Open (creating if needed) a cache at `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<BlobCache> {
        for sub in ["blobs/sha256", "blobs/sha512", "partial", "locks"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| io_err(format!("creating cache directory {}", p.display()), e))?;
        }
        Ok(BlobCache {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a complete blob (whether or not it is there).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// Path of a partial download.
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    fn lock_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("locks")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    /// Whether a complete blob of the right size is cached.
    pub fn has(&self, desc: &Descriptor) -> bool {
        std::fs::metadata(self.blob_path(&desc.digest))
            .is_ok_and(|m| m.is_file() && m.len() == desc.size)
    }

    /// Bytes of a partial download of `desc`, for progress reporting.
    pub fn partial_len(&self, d: &Digest) -> u64 {
        std::fs::metadata(self.partial_path(d)).map_or(0, |m| m.len())
    }

    /// Make sure `desc` is cached, downloading it from `image`'s repository if not
    /// (resuming a partial download). Concurrent callers (threads or processes) for the
    /// same blob download it once.
    pub async fn ensure(
        &self,
        client: &RegistryClient,
        image: &ImageRef,
        desc: &Descriptor,
    ) -> anyhow::Result<Ensured> {
        self.ensure_observed(client, image, desc, None).await
    }

    /// [`ensure`](Self::ensure), telling `observer` how far the partial file
    /// ([`partial_path`](Self::partial_path)) has been written while it downloads. When
    /// this returns `Ok`, the blob is complete, verified and at
    /// [`blob_path`](Self::blob_path).
    pub async fn ensure_observed(
        &self,
        client: &RegistryClient,
        image: &ImageRef,
        desc: &Descriptor,
        observer: Option<&dyn DownloadObserver>,
    ) -> anyhow::Result<Ensured> {
        if self.has(desc) {
            return Ok(Ensured {
                cached: true,
                resumed_from: 0,
            });
        }
        let lock_path = self.lock_path(&desc.digest);
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
            Ok(f)
        })
        .await?
        .map_err(|e| io_err("locking the cache entry".into(), e))?;
        if self.has(desc) {
            drop(lock);
            return Ok(Ensured {
                cached: true,
                resumed_from: 0,
            });
        }
        let partial = self.partial_path(&desc.digest);
        let download = client
            .fetch_blob_to_file_observed(
                image,
                desc,
                &partial,
                observer,
                berth_client::Durability::Synced,
            )
            .await
            .map_err(anyhow::Error::new)?;
        let resumed_from = download.resumed_from.min(desc.size);
        let dest = self.blob_path(&desc.digest);
        let parent = dest.parent().expect("blob path has a parent").to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o444))?;
            std::fs::rename(&partial, &dest)?;
            std::fs::File::open(&parent)?.sync_all()
        })
        .await?
        .map_err(|e| io_err(format!("storing {} in the cache", desc.digest), e))?;
        drop(lock);
        Ok(Ensured {
            cached: false,
            resumed_from,
        })
    }

    /// Put a verified blob at `dest` (hard link; a copy across filesystems). An existing
    /// file of the right size is kept.
    pub fn link_to(&self, desc: &Descriptor, dest: &Path) -> anyhow::Result<()> {
        if std::fs::metadata(dest).is_ok_and(|m| m.len() == desc.size) {
            return Ok(());
        }
        let src = self.blob_path(&desc.digest);
        let _ = std::fs::remove_file(dest);
        if std::fs::hard_link(&src, dest).is_ok() {
            return Ok(());
        }
        let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::copy(&src, &tmp)
            .map_err(|e| io_err(format!("copying {} to {}", src.display(), tmp.display()), e))?;
        std::fs::rename(&tmp, dest)
            .map_err(|e| io_err(format!("renaming into {}", dest.display()), e))?;
        Ok(())
    }
}
