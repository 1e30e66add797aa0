//! Applying OCI image layers (tar, optionally gzip- or zstd-compressed) to a root
//! filesystem directory, safely.
//!
//! # Safety model
//!
//! Everything is done relative to a directory file descriptor for the root, one path
//! component at a time (`openat` with `O_NOFOLLOW | O_DIRECTORY`), never through a path
//! string the kernel would resolve on its own:
//!
//! * An entry's path is cleaned lexically first (`.` dropped, `..` pops, clamped at the
//!   root, a leading `/` ignored) — exactly what containerd and umoci do
//!   (`filepath.Join("/", name)`).
//! * Parent directories are then resolved inside the root: a component that is a
//!   symbolic link is expanded *as if the root were `/`* (an absolute target restarts
//!   at the root, `..` never climbs above it; at most 40 links), like containerd's
//!   `fs.RootPath` and umoci's `securejoin`. So `lib -> usr/lib` (usrmerge) works and
//!   `evil -> /etc` or `evil -> ../../../..` lands inside the root.
//! * The last component is never followed: an existing file, link or directory there is
//!   replaced (removed first, a directory recursively), and files are created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`. Symbolic links are stored verbatim (their targets
//!   are data, only ever interpreted by this resolver).
//! * Hard links must name an existing non-directory inside the root (resolved the same
//!   way); `linkat` without `AT_SYMLINK_FOLLOW` links a symlink itself, never its target.
//!
//! # Whiteouts (OCI image spec, "Representing changes")
//!
//! * `DIR/.wh.NAME` removes `DIR/NAME` (recursively) from the lower layers; the whiteout
//!   file itself is never created. Entries the same layer adds are not affected.
//! * `DIR/.wh..wh..opq` hides every lower-layer child of `DIR`: whatever under `DIR` was
//!   not written by the current layer is removed, whether the marker comes before or
//!   after its siblings in the archive.
//! * Other `.wh..wh.*` names (AUFS metadata) are ignored.
//!
//! # Metadata
//!
//! Modes (incl. setuid/setgid/sticky), mtimes (nanoseconds from PAX `mtime`), and
//! `SCHILY.xattr.*` extended attributes are applied; ownership only when running as root
//! (or when asked); device nodes only as root. Failures to set ownership or an xattr that
//! the process is not permitted to set are counted in [`LayerStats`], not fatal.
//! Directory modes and times are applied when the layer ends (so a read-only directory
//! can still be filled, and its mtime is not disturbed by its children).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use sha2::Digest as _;

/// Maximum number of symbolic links expanded while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;
/// Copy buffer for file contents.
const COPY_BUF: usize = 1 << 20;

/// Compression of a layer blob, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detect from magic bytes: gzip `1f 8b`, zstd `28 b5 2f fd`, anything else is a tar.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// What an OCI / Docker layer media type says (`None` for unknown types).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") || media_type.ends_with(".diff.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// A streaming decompressor over `reader`, chosen by the stream's magic bytes. Gzip
/// streams may have several members (pigz), zstd streams several frames.
pub fn decompress<'a, R: Read + Send + 'a>(
    reader: R,
) -> io::Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(COPY_BUF, reader);
    let compression = Compression::sniff(buffered.fill_buf()?);
    let reader: Box<dyn Read + Send + 'a> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    };
    Ok((compression, reader))
}

/// How to apply layers.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Set uid/gid from the archive (default: when the effective uid is 0).
    pub same_owner: bool,
    /// Create block and character devices (default: when the effective uid is 0);
    /// otherwise they are skipped and counted.
    pub devices: bool,
    /// Apply `SCHILY.xattr.*` extended attributes (default: true; failures are counted).
    pub xattrs: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            same_owner: root,
            devices: root,
            xattrs: true,
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    pub fifos: u64,
    /// `.wh.NAME` entries applied (including those naming nothing).
    pub whiteouts: u64,
    /// `.wh..wh..opq` markers applied.
    pub opaque_dirs: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Device nodes not created because the process may not.
    pub skipped_devices: u64,
    /// Extended attributes the process could not set.
    pub skipped_xattrs: u64,
    /// Entries whose ownership could not be set.
    pub skipped_owners: u64,
    /// Entries of types that have no place in a root filesystem (e.g. global PAX headers).
    pub skipped_other: u64,
}

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading the layer archive: {0}")]
    Archive(#[source] io::Error),
    #[error("{op} {path:?}: {source}")]
    Fs {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "uncompressed layer digest mismatch: the image config says {expected}, the layer is {actual}"
    )]
    DiffIdMismatch { expected: String, actual: String },
}

fn fs_err(op: &'static str, path: &[u8], e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Fs {
        op,
        path: String::from_utf8_lossy(path).into_owned(),
        source: e.into(),
    }
}

fn invalid(path: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::Invalid {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.into(),
    }
}

/// A directory resolved inside the root: its descriptor and its real path (components
/// from the root, none of them a symlink).
struct Resolved {
    fd: OwnedFd,
    path: Vec<Vec<u8>>,
    /// The group a new entry created in it gets (its own with setgid, else ours); `None`
    /// until needed.
    new_gid: Option<u32>,
}

/// Deferred metadata of a directory, applied when the layer ends.
struct DirMeta {
    path: Vec<Vec<u8>>,
    mode: u32,
    times: Option<Timestamps>,
}

/// Applies layers, bottom first, to one root directory.
pub struct Unpacker {
    root: OwnedFd,
    root_path: PathBuf,
    opts: UnpackOptions,
    is_root: bool,
    /// Effective ids: what a newly created entry is owned by (so `fchown` can be skipped
    /// when the archive asks for exactly that).
    euid: u32,
    egid: u32,
    /// The process umask: a new file created with a mode none of whose bits it masks gets
    /// that mode exactly (so `fchmod` can be skipped).
    umask: u32,
    /// `openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)` works here (Linux 5.6+): a path
    /// without symlinks is then resolved in one call instead of one per component.
    openat2: bool,
    buf: Vec<u8>,
}

/// Per-layer state.
#[derive(Default)]
struct LayerState {
    /// Real paths (joined with `/`) written by the current layer.
    created: HashSet<Vec<u8>>,
    /// Directory metadata to apply at the end, by real path; insertion order kept.
    dirs: HashMap<Vec<u8>, usize>,
    dir_list: Vec<DirMeta>,
    stats: LayerStats,
    /// The parent directory of the previous entry (archives list siblings together):
    /// its cleaned archive components and its resolution. Dropped whenever anything is
    /// removed, so it never names a directory that was replaced.
    parent_cache: Option<(Vec<Vec<u8>>, Resolved)>,
    /// Something was removed while applying the current entry (drop the parent cache).
    removed: bool,
}

fn join(path: &[Vec<u8>]) -> Vec<u8> {
    path.join(&b'/')
}

fn child_key(parent: &[Vec<u8>], name: &[u8]) -> Vec<u8> {
    let mut key = join(parent);
    if !key.is_empty() {
        key.push(b'/');
    }
    key.extend_from_slice(name);
    key
}

/// Clean an archive path lexically: drop empty and `.` components, `..` pops (never above
/// the root). A leading `/` is therefore harmless.
pub fn clean_path(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn timestamps(secs: i64, nsecs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nsecs as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker {
    /// Prepare to unpack into `root`, which must be an existing directory.
    pub fn new(root: &Path, opts: UnpackOptions) -> Result<Unpacker, UnpackError> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fs_err("open root", root.as_os_str().as_bytes(), e))?;
        // Read the umask (setting it back at once; nothing else here creates files yet).
        let umask = rustix::process::umask(Mode::from_raw_mode(0o022));
        rustix::process::umask(umask);
        let openat2 = !matches!(
            rustix::fs::openat2(
                &fd,
                ".",
                dir_flags(),
                Mode::empty(),
                ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
            ),
            Err(Errno::NOSYS) | Err(Errno::PERM)
        );
        Ok(Unpacker {
            root: fd,
            root_path: root.to_path_buf(),
            opts,
            is_root: rustix::process::geteuid().is_root(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            umask: umask.as_raw_mode() as u32,
            openat2,
            buf: vec![0; COPY_BUF],
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Apply one (possibly compressed) layer blob read from `blob`. If `diff_id` is given
    /// (`sha256:…` from the image config's `rootfs.diff_ids`), the uncompressed stream
    /// must hash to it.
    ///
    /// Two threads share the work: one decompresses, hashes and parses the archive, the
    /// calling thread creates the files (see [`apply_tar`](Self::apply_tar)).
    pub fn apply_blob<R: Read + Send>(
        &mut self,
        blob: R,
        diff_id: Option<&str>,
    ) -> Result<LayerStats, UnpackError> {
        let (_, reader) = decompress(blob).map_err(UnpackError::Archive)?;
        let expected = diff_id.filter(|d| d.starts_with("sha256:"));
        let hashing = HashingReader {
            inner: reader,
            hasher: expected.map(|_| sha2::Sha256::new()),
        };
        let (stats, hashing) = self.apply_tar_returning(hashing)?;
        if let (Some(expected), Some(hasher)) = (expected, hashing.hasher) {
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != expected {
                return Err(UnpackError::DiffIdMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok(stats)
    }

    /// Apply one uncompressed tar layer (read to its end, padding included).
    ///
    /// A second thread reads and parses the archive and hands entries (headers, then file
    /// contents in chunks) over a bounded channel to the calling thread, which applies
    /// them; so decompression and hashing overlap file creation. At most
    /// `PIPE_DEPTH` x `PIPE_CHUNK` bytes of file content are in flight.
    pub fn apply_tar<R: Read + Send>(&mut self, tar: R) -> Result<LayerStats, UnpackError> {
        self.apply_tar_returning(tar).map(|(stats, _)| stats)
    }

    fn apply_tar_returning<R: Read + Send>(
        &mut self,
        tar: R,
    ) -> Result<(LayerStats, R), UnpackError> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(PIPE_DEPTH);
            // Emptied data buffers go back to the reader for reuse.
            let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let reader = std::thread::Builder::new()
                .name("berth-untar".into())
                .spawn_scoped(scope, move || read_archive(tar, &tx, &recycle_rx))
                .map_err(UnpackError::Archive)?;
            let mut state = LayerState::default();
            let applied = self.apply_pieces(&rx, &recycle_tx, &mut state);
            // Stop the reader if we stopped early (it then fails to send and returns).
            drop(rx);
            let read = reader
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            match (applied, read) {
                // The archive's own error explains a truncated stream best.
                (_, Err(e)) => Err(e),
                (Err(e), Ok(_)) => Err(e),
                (Ok(()), Ok(r)) => {
                    self.finish_dirs(&mut state);
                    Ok((state.stats, r))
                }
            }
        })
    }

    fn apply_pieces(
        &mut self,
        rx: &std::sync::mpsc::Receiver<Piece>,
        recycle: &std::sync::mpsc::Sender<Vec<u8>>,
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        while let Ok(piece) = rx.recv() {
            let head = match piece {
                Piece::Entry(h) => h,
                Piece::Data(_) | Piece::FileEnd => {
                    return Err(UnpackError::Archive(io::Error::other(
                        "archive reader out of step (file data without an entry)",
                    )));
                }
            };
            state.stats.entries += 1;
            let mut data = PieceReader {
                rx,
                recycle,
                chunk: Vec::new(),
                pos: 0,
                done: !head.has_data(),
            };
            self.apply_entry(&head, &mut data, state)?;
            data.drain().map_err(UnpackError::Archive)?;
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        head: &EntryHead,
        data: &mut dyn Read,
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        let raw_path = head.raw_path.as_slice();
        let kind = head.kind;
        let mode = head.mode;
        let times = head.mtime.map(|(s, n)| timestamps(s, n));
        let mut comps = clean_path(raw_path);
        let meta = Meta {
            uid: head.uid,
            gid: head.gid,
            xattrs: head.xattrs.clone(),
        };

        let Some(name) = comps.pop() else {
            // The root itself (`./`): only a directory's metadata applies.
            if kind.is_dir() {
                let root = rustix::io::dup(&self.root).map_err(|e| fs_err("dup", b".", e))?;
                self.set_owner_fd(&root, &meta, state);
                self.set_xattrs_fd(&root, &meta, state);
                self.defer_dir(state, Vec::new(), mode, times);
            } else {
                state.stats.skipped_other += 1;
            }
            return Ok(());
        };

        // Whiteouts.
        if let Some(target) = name.strip_prefix(b".wh.") {
            state.parent_cache = None;
            if name == b".wh..wh..opq" {
                state.stats.opaque_dirs += 1;
                if let Some(dir) = self.resolve_dir(&comps, false, state, raw_path)? {
                    self.ensure_writable(&dir, state);
                    self.opaque(&dir.fd, &dir.path, state)?;
                }
            } else if target.starts_with(b".wh.") {
                // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the filesystem.
                state.stats.skipped_other += 1;
            } else if target.is_empty() || target == b"." || target == b".." {
                return Err(invalid(raw_path, "whiteout names no file"));
            } else {
                state.stats.whiteouts += 1;
                if let Some(dir) = self.resolve_dir(&comps, false, state, raw_path)? {
                    let key = child_key(&dir.path, target);
                    if !state.created.contains(&key) {
                        self.ensure_writable(&dir, state);
                        remove_all(&dir.fd, target, self.is_root)
                            .map_err(|e| fs_err("remove (whiteout)", &key, e))?;
                    }
                }
            }
            return Ok(());
        }

        use tar::EntryType as T;
        let supported = matches!(
            kind,
            T::Regular
                | T::Continuous
                | T::GNUSparse
                | T::Directory
                | T::Symlink
                | T::Link
                | T::Char
                | T::Block
                | T::Fifo
        );
        if !supported {
            state.stats.skipped_other += 1;
            return Ok(());
        }
        if matches!(kind, T::Char | T::Block) && !self.opts.devices {
            state.stats.skipped_devices += 1;
            return Ok(());
        }

        // The parent directory: the previous entry's when it is the same (archives list
        // siblings together), else resolved (and created) inside the root.
        let parent = match state.parent_cache.take() {
            Some((k, r)) if k == comps => r,
            _ => self
                .resolve_dir(&comps, true, state, raw_path)?
                .expect("resolve_dir with create always yields a directory"),
        };
        let mut parent = parent;
        let r = self.apply_in(head, data, state, &mut parent, name, mode, times, &meta);
        // Keep the parent for the next entry unless something was removed (which drops
        // the cache so that it never names a replaced directory).
        if r.is_ok() && !state.removed {
            state.parent_cache = Some((comps, parent));
        }
        state.removed = false;
        r
    }

    /// Apply a non-whiteout entry named `name` in the resolved directory `parent`.
    #[allow(clippy::too_many_arguments)]
    fn apply_in(
        &mut self,
        head: &EntryHead,
        data: &mut dyn Read,
        state: &mut LayerState,
        parent: &mut Resolved,
        name: Vec<u8>,
        mode: u32,
        times: Option<Timestamps>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        let kind = head.kind;
        let raw_path = head.raw_path.as_slice();
        self.ensure_writable(parent, state);
        let key = child_key(&parent.path, &name);

        if kind == T::Link {
            // Resolve the link target before anything at `name` is removed.
            let link = head
                .link_name
                .clone()
                .ok_or_else(|| invalid(raw_path, "hard link without a target"))?;
            let mut lcomps = clean_path(&link);
            let lname = lcomps
                .pop()
                .ok_or_else(|| invalid(raw_path, "hard link to the root directory"))?;
            let src = self
                .resolve_dir(&lcomps, false, state, raw_path)?
                .ok_or_else(|| {
                    invalid(
                        raw_path,
                        format!(
                            "hard link target {:?} does not exist",
                            String::from_utf8_lossy(&link)
                        ),
                    )
                })?;
            let src_key = child_key(&src.path, &lname);
            if src_key == key {
                // A link to itself: nothing to do.
                state.created.insert(key);
                return Ok(());
            }
            match rustix::fs::statat(&src.fd, lname.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    return Err(invalid(raw_path, "hard link to a directory"));
                }
                Ok(_) => {}
                Err(Errno::NOENT) => {
                    return Err(invalid(
                        raw_path,
                        format!(
                            "hard link target {:?} does not exist",
                            String::from_utf8_lossy(&link)
                        ),
                    ));
                }
                Err(e) => return Err(fs_err("stat (hard link target)", &src_key, e)),
            }
            self.create_replacing(state, parent, &name, &key, "hard link", |p| {
                rustix::fs::linkat(
                    &src.fd,
                    lname.as_slice(),
                    &p.fd,
                    name.as_slice(),
                    AtFlags::empty(),
                )
            })?;
            state.stats.hardlinks += 1;
            state.created.insert(key);
            return Ok(());
        }

        match kind {
            T::Directory => {
                // mkdir; an existing directory is kept (its metadata replaced), anything
                // else there is replaced.
                let created = match rustix::fs::mkdirat(
                    &parent.fd,
                    name.as_slice(),
                    Mode::from_raw_mode(0o700),
                ) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(
                            &parent.fd,
                            name.as_slice(),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(|e| fs_err("stat", &key, e))?;
                        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                            false
                        } else {
                            state.removed = true;
                            remove_all(&parent.fd, &name, self.is_root)
                                .map_err(|e| fs_err("replace", &key, e))?;
                            rustix::fs::mkdirat(
                                &parent.fd,
                                name.as_slice(),
                                Mode::from_raw_mode(0o700),
                            )
                            .map_err(|e| fs_err("mkdir", &key, e))?;
                            true
                        }
                    }
                    Err(e) => return Err(fs_err("mkdir", &key, e)),
                };
                let chown = self.needs_chown(created, parent, meta);
                if chown || (self.opts.xattrs && !meta.xattrs.is_empty()) {
                    let fd =
                        rustix::fs::openat(&parent.fd, name.as_slice(), dir_flags(), Mode::empty())
                            .map_err(|e| fs_err("open dir", &key, e))?;
                    if chown {
                        self.set_owner_fd(&fd, meta, state);
                    }
                    self.set_xattrs_fd(&fd, meta, state);
                }
                let mut path = parent.path.clone();
                path.push(name);
                self.defer_dir(state, path, mode, times);
                state.stats.dirs += 1;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                // Created with its final mode when the umask leaves it alone and no
                // setuid/setgid/sticky bit is involved (chown could clear those).
                let exact = mode & 0o7000 == 0 && mode & self.umask == 0;
                let create_mode = if exact { mode } else { 0o600 };
                let fd = self.create_replacing(state, parent, &name, &key, "create", |p| {
                    rustix::fs::openat(
                        &p.fd,
                        name.as_slice(),
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(create_mode),
                    )
                })?;
                let mut file = std::fs::File::from(fd);
                let mut written = 0u64;
                loop {
                    let n = match data.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(UnpackError::Archive(e)),
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| fs_err("write", &key, e))?;
                    written += n as u64;
                }
                state.stats.bytes += written;
                let chown = self.needs_chown(true, parent, meta);
                if chown {
                    self.set_owner_fd(&file, meta, state);
                }
                if chown || !exact {
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                        .map_err(|e| fs_err("chmod", &key, e))?;
                }
                self.set_xattrs_fd(&file, meta, state);
                if let Some(t) = &times {
                    rustix::fs::futimens(&file, t).map_err(|e| fs_err("set times", &key, e))?;
                }
                state.stats.files += 1;
            }
            T::Symlink => {
                let target = head
                    .link_name
                    .clone()
                    .ok_or_else(|| invalid(raw_path, "symbolic link without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(invalid(raw_path, "symbolic link with an empty target"));
                }
                self.create_replacing(state, parent, &name, &key, "symlink", |p| {
                    rustix::fs::symlinkat(target.as_slice(), &p.fd, name.as_slice())
                })?;
                if self.needs_chown(true, parent, meta) {
                    self.set_owner_at(&parent.fd, &name, meta, state);
                }
                self.set_xattrs_at(&parent.fd, &name, meta, state);
                if let Some(t) = &times {
                    // Best effort: some filesystems refuse times on links.
                    let _ = rustix::fs::utimensat(
                        &parent.fd,
                        name.as_slice(),
                        t,
                        AtFlags::SYMLINK_NOFOLLOW,
                    );
                }
                state.stats.symlinks += 1;
            }
            T::Char | T::Block | T::Fifo => {
                let (ft, dev) = if kind == T::Fifo {
                    (FileType::Fifo, 0)
                } else {
                    let (major, minor) = head.dev;
                    let ft = if kind == T::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    (ft, rustix::fs::makedev(major, minor))
                };
                let r = self.create_replacing(state, parent, &name, &key, "mknod", |p| {
                    rustix::fs::mknodat(
                        &p.fd,
                        name.as_slice(),
                        ft,
                        Mode::from_raw_mode(mode & 0o777),
                        dev,
                    )
                });
                match r {
                    Ok(()) if kind == T::Fifo => state.stats.fifos += 1,
                    Ok(()) => state.stats.devices += 1,
                    Err(UnpackError::Fs { source, .. })
                        if kind != T::Fifo
                            && source.raw_os_error() == Some(Errno::PERM.raw_os_error()) =>
                    {
                        state.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
                self.set_owner_at(&parent.fd, &name, meta, state);
                // chmod after chown (which may clear setuid/setgid); devices and fifos
                // are never followed, chmodat on them is safe.
                let _ = rustix::fs::chmodat(
                    &parent.fd,
                    name.as_slice(),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                );
                self.set_xattrs_at(&parent.fd, &name, meta, state);
                if let Some(t) = &times {
                    let _ = rustix::fs::utimensat(
                        &parent.fd,
                        name.as_slice(),
                        t,
                        AtFlags::SYMLINK_NOFOLLOW,
                    );
                }
            }
            _ => unreachable!("filtered above"),
        }
        state.created.insert(key);
        Ok(())
    }

    /// Create `name` in `parent` with `create` (which must fail with `EEXIST` when
    /// something is there); if something is, it is removed (a directory recursively,
    /// never followed) and `create` retried once.
    fn create_replacing<T>(
        &self,
        state: &mut LayerState,
        parent: &Resolved,
        name: &[u8],
        key: &[u8],
        op: &'static str,
        create: impl Fn(&Resolved) -> rustix::io::Result<T>,
    ) -> Result<T, UnpackError> {
        match create(parent) {
            Ok(v) => Ok(v),
            Err(Errno::EXIST) => {
                state.removed = true;
                remove_all(&parent.fd, name, self.is_root)
                    .map_err(|e| fs_err("replace", key, e))?;
                create(parent).map_err(|e| fs_err(op, key, e))
            }
            Err(e) => Err(fs_err(op, key, e)),
        }
    }

    /// Whether ownership must be set: always for an entry that existed before, and for a
    /// new one unless it already has the owner the archive asks for (new entries belong to
    /// our effective uid and to our gid, or the parent's group under setgid).
    fn needs_chown(&self, created: bool, parent: &mut Resolved, meta: &Meta) -> bool {
        if !self.opts.same_owner {
            return false;
        }
        if !created || meta.uid != u64::from(self.euid) {
            return true;
        }
        let new_gid = *parent.new_gid.get_or_insert_with(|| {
            match rustix::fs::fstat(&parent.fd) {
                Ok(st) if st.st_mode & 0o2000 != 0 => st.st_gid,
                Ok(_) => self.egid,
                Err(_) => u32::MAX, // unknown: set it explicitly
            }
        });
        meta.gid != u64::from(new_gid)
    }

    /// Resolve `comps` (already cleaned) to a directory inside the root, expanding
    /// symlinks scoped to the root. With `create`, missing directories are made (0755);
    /// without it, a missing component yields `None`.
    fn resolve_dir(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        state: &mut LayerState,
        entry_path: &[u8],
    ) -> Result<Option<Resolved>, UnpackError> {
        // Fast path: the whole path exists and has no symlink.
        if let Some(fd) = self.open_beneath(comps) {
            return Ok(Some(Resolved {
                fd,
                path: comps.to_vec(),
                new_gid: None,
            }));
        }
        let mut queue: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut path: Vec<Vec<u8>> = Vec::new();
        let mut links = 0usize;
        while let Some(comp) = queue.pop_front() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    fds.pop();
                    path.pop();
                    continue;
                }
                _ => {}
            }
            let cur: BorrowedFd<'_> = fds.last().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
            match rustix::fs::openat(cur, comp.as_slice(), dir_flags(), Mode::empty()) {
                Ok(fd) => {
                    fds.push(fd);
                    path.push(comp);
                }
                Err(Errno::NOENT) if create => {
                    if !self.is_root {
                        // The parent may be a read-only directory of a lower layer.
                        let cur_dup =
                            rustix::io::dup(cur).map_err(|e| fs_err("dup", entry_path, e))?;
                        self.ensure_writable(
                            &Resolved {
                                fd: cur_dup,
                                path: path.clone(),
                                new_gid: None,
                            },
                            state,
                        );
                    }
                    match rustix::fs::mkdirat(cur, comp.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(fs_err("mkdir", &child_key(&path, &comp), e));
                        }
                    }
                    state.created.insert(child_key(&path, &comp));
                    // Re-queue: opened (or, if something raced in, resolved) next round.
                    queue.push_front(comp);
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let st = rustix::fs::statat(cur, comp.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| fs_err("stat", &child_key(&path, &comp), e))?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                        if create {
                            return Err(invalid(
                                entry_path,
                                format!(
                                    "parent {:?} is not a directory",
                                    String::from_utf8_lossy(&child_key(&path, &comp))
                                ),
                            ));
                        }
                        return Ok(None);
                    }
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(invalid(entry_path, "too many levels of symbolic links"));
                    }
                    let target = rustix::fs::readlinkat(cur, comp.as_slice(), Vec::new())
                        .map_err(|e| fs_err("readlink", &child_key(&path, &comp), e))?;
                    let target = target.into_bytes();
                    if target.starts_with(b"/") {
                        fds.clear();
                        path.clear();
                    }
                    for c in target.split(|&b| b == b'/').rev() {
                        queue.push_front(c.to_vec());
                    }
                }
                Err(e) => return Err(fs_err("open dir", &child_key(&path, &comp), e)),
            }
        }
        let fd = match fds.pop() {
            Some(fd) => fd,
            None => rustix::io::dup(&self.root).map_err(|e| fs_err("dup", entry_path, e))?,
        };
        Ok(Some(Resolved {
            fd,
            path,
            new_gid: None,
        }))
    }

    /// Not root: make a read-only directory writable for now; its mode and mtime are
    /// restored when the layer ends.
    fn ensure_writable(&self, dir: &Resolved, state: &mut LayerState) {
        if self.is_root {
            return;
        }
        let Ok(st) = rustix::fs::fstat(&dir.fd) else {
            return;
        };
        let mode = st.st_mode & 0o7777;
        if mode & 0o700 == 0o700 {
            return;
        }
        let key = join(&dir.path);
        if !state.dirs.contains_key(&key) {
            let times = timestamps(st.st_mtime, st.st_mtime_nsec as i64);
            self.defer_dir(state, dir.path.clone(), mode, Some(times));
        }
        let _ = rustix::fs::fchmod(&dir.fd, Mode::from_raw_mode(mode | 0o700));
    }

    fn defer_dir(
        &self,
        state: &mut LayerState,
        path: Vec<Vec<u8>>,
        mode: u32,
        times: Option<Timestamps>,
    ) {
        let key = join(&path);
        let meta = DirMeta { path, mode, times };
        match state.dirs.get(&key) {
            Some(&i) => state.dir_list[i] = meta,
            None => {
                state.dirs.insert(key, state.dir_list.len());
                state.dir_list.push(meta);
            }
        }
    }

    /// Apply deferred directory modes and times, deepest (latest) first.
    fn finish_dirs(&self, state: &mut LayerState) {
        for meta in state.dir_list.iter().rev() {
            let Some(fd) = self.open_real(&meta.path) else {
                continue; // removed later in the layer
            };
            let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode));
            if let Some(t) = &meta.times {
                let _ = rustix::fs::futimens(&fd, t);
            }
        }
    }

    /// Open a real path (no symlinks expected, none followed).
    fn open_real(&self, path: &[Vec<u8>]) -> Option<OwnedFd> {
        if let Some(fd) = self.open_beneath(path) {
            return Some(fd);
        }
        let mut fd = rustix::io::dup(&self.root).ok()?;
        for comp in path {
            fd = rustix::fs::openat(&fd, comp.as_slice(), dir_flags(), Mode::empty()).ok()?;
        }
        Some(fd)
    }

    /// Open the directory at `comps` (cleaned: no `.`, `..` or empty components) in one
    /// `openat2` call that refuses any symlink and anything outside the root; `None` when
    /// that fails for any reason (a symlink on the way, a missing component, no openat2),
    /// and the caller resolves component by component instead.
    fn open_beneath(&self, comps: &[Vec<u8>]) -> Option<OwnedFd> {
        if !self.openat2 {
            return None;
        }
        let path: Vec<u8> = if comps.is_empty() {
            b".".to_vec()
        } else {
            join(comps)
        };
        rustix::fs::openat2(
            &self.root,
            path.as_slice(),
            dir_flags(),
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()
    }

    /// Remove every child of the directory `dir` (real path `path`) that the current
    /// layer did not write; recurse into directories it did write (or re-declare).
    fn opaque(
        &self,
        dir: &OwnedFd,
        path: &[Vec<u8>],
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        for name in list_dir(dir).map_err(|e| fs_err("read dir", &join(path), e))? {
            let key = child_key(path, &name);
            if state.created.contains(&key) {
                if let Ok(sub) =
                    rustix::fs::openat(dir, name.as_slice(), dir_flags(), Mode::empty())
                {
                    let mut sub_path = path.to_vec();
                    sub_path.push(name);
                    self.opaque(&sub, &sub_path, state)?;
                }
            } else {
                remove_all(dir, &name, self.is_root)
                    .map_err(|e| fs_err("remove (opaque whiteout)", &key, e))?;
            }
        }
        Ok(())
    }

    fn set_owner_fd(&self, fd: impl AsFd, meta: &Meta, state: &mut LayerState) {
        if !self.opts.same_owner {
            return;
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(meta.uid), u32::try_from(meta.gid)) else {
            state.stats.skipped_owners += 1;
            return;
        };
        // SAFETY-free: rustix takes raw ids by value.
        let r = rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        if r.is_err() {
            state.stats.skipped_owners += 1;
        }
    }

    fn set_owner_at(&self, dir: &OwnedFd, name: &[u8], meta: &Meta, state: &mut LayerState) {
        if !self.opts.same_owner {
            return;
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(meta.uid), u32::try_from(meta.gid)) else {
            state.stats.skipped_owners += 1;
            return;
        };
        let r = rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        if r.is_err() {
            state.stats.skipped_owners += 1;
        }
    }

    fn set_xattrs_fd(&self, fd: impl AsFd, meta: &Meta, state: &mut LayerState) {
        if !self.opts.xattrs {
            return;
        }
        for (name, value) in &meta.xattrs {
            if rustix::fs::fsetxattr(&fd, name.as_slice(), value, XattrFlags::empty()).is_err() {
                state.stats.skipped_xattrs += 1;
            }
        }
    }

    /// xattrs of a symlink or device: `lsetxattr` through `/proc/self/fd/N/NAME`, where
    /// `N` is the (already resolved) parent directory, so only `NAME` is looked up and
    /// it is not followed.
    fn set_xattrs_at(&self, dir: &OwnedFd, name: &[u8], meta: &Meta, state: &mut LayerState) {
        if !self.opts.xattrs || meta.xattrs.is_empty() {
            return;
        }
        use std::os::fd::AsRawFd;
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        let p = Path::new(OsStr::from_bytes(&p));
        for (xname, value) in &meta.xattrs {
            if rustix::fs::lsetxattr(p, xname.as_slice(), value, XattrFlags::empty()).is_err() {
                state.stats.skipped_xattrs += 1;
            }
        }
    }
}

/// Pieces of file content handed from the archive reader to the applier.
const PIPE_CHUNK: usize = 128 * 1024;
/// Pieces in flight between the two threads.
const PIPE_DEPTH: usize = 128;

/// What the archive-reading thread sends: an entry's header, then (for a regular file)
/// its content in `Data` pieces and a `FileEnd`.
enum Piece {
    Entry(Box<EntryHead>),
    Data(Vec<u8>),
    FileEnd,
}

/// An archive entry's header: everything the applier needs, owned.
struct EntryHead {
    raw_path: Vec<u8>,
    kind: tar::EntryType,
    /// Permission bits incl. setuid/setgid/sticky.
    mode: u32,
    uid: u64,
    gid: u64,
    /// Seconds and nanoseconds (PAX `mtime`, else the header's).
    mtime: Option<(i64, i64)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link_name: Option<Vec<u8>>,
    /// Device major and minor numbers.
    dev: (u32, u32),
}

impl EntryHead {
    fn has_data(&self) -> bool {
        use tar::EntryType as T;
        matches!(self.kind, T::Regular | T::Continuous | T::GNUSparse)
    }

    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<EntryHead> {
        // PAX metadata: nanosecond mtime, large uid/gid, xattrs.
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut pax_mtime: Option<(i64, i64)> = None;
        let mut pax_uid: Option<u64> = None;
        let mut pax_gid: Option<u64> = None;
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    pax_mtime = parse_pax_time(ext.value_bytes());
                } else if key == b"uid" {
                    pax_uid = std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|s| s.parse().ok());
                } else if key == b"gid" {
                    pax_gid = std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|s| s.parse().ok());
                }
            }
        }
        let header = entry.header();
        Ok(EntryHead {
            raw_path: entry.path_bytes().into_owned(),
            kind: header.entry_type(),
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: pax_uid.or_else(|| header.uid().ok()).unwrap_or(0),
            gid: pax_gid.or_else(|| header.gid().ok()).unwrap_or(0),
            mtime: pax_mtime.or_else(|| header.mtime().ok().map(|s| (s as i64, 0))),
            xattrs,
            link_name: entry.link_name_bytes().map(|l| l.into_owned()),
            dev: (
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            ),
        })
    }
}

/// The archive-reading thread: parse `tar`, send each entry (and a file's content), then
/// read to the end of the stream (padding after the archive) and hand the reader back.
/// Returns early, without error, when the applier has gone (it stopped on an error).
fn read_archive<R: Read>(
    tar: R,
    tx: &std::sync::mpsc::SyncSender<Piece>,
    recycled: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<R, UnpackError> {
    let mut archive = tar::Archive::new(tar);
    {
        let entries = archive.entries().map_err(UnpackError::Archive)?;
        for entry in entries {
            let mut entry = entry.map_err(UnpackError::Archive)?;
            let head = EntryHead::read(&mut entry).map_err(UnpackError::Archive)?;
            let has_data = head.has_data();
            if tx.send(Piece::Entry(Box::new(head))).is_err() {
                return Ok(archive.into_inner());
            }
            if has_data {
                loop {
                    let mut chunk = recycled.try_recv().unwrap_or_default();
                    chunk.resize(PIPE_CHUNK, 0);
                    let mut n = 0;
                    while n < chunk.len() {
                        match entry.read(&mut chunk[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(UnpackError::Archive(e)),
                        }
                    }
                    if n == 0 {
                        break;
                    }
                    chunk.truncate(n);
                    if tx.send(Piece::Data(chunk)).is_err() {
                        return Ok(archive.into_inner());
                    }
                }
                if tx.send(Piece::FileEnd).is_err() {
                    return Ok(archive.into_inner());
                }
            }
        }
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Archive)?;
    Ok(rest)
}

/// A regular file's content as the applier reads it: `Data` pieces up to `FileEnd`.
struct PieceReader<'a> {
    rx: &'a std::sync::mpsc::Receiver<Piece>,
    recycle: &'a std::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl PieceReader<'_> {
    /// Skip whatever of the content was not read.
    fn drain(&mut self) -> io::Result<()> {
        while !self.done {
            self.next_piece()?;
        }
        Ok(())
    }

    fn next_piece(&mut self) -> io::Result<()> {
        match self.rx.recv() {
            Ok(Piece::Data(d)) => {
                let used = std::mem::replace(&mut self.chunk, d);
                if used.capacity() >= PIPE_CHUNK {
                    let _ = self.recycle.send(used);
                }
                self.pos = 0;
                Ok(())
            }
            Ok(Piece::FileEnd) => {
                self.done = true;
                Ok(())
            }
            Ok(Piece::Entry(_)) => Err(io::Error::other(
                "archive reader out of step (an entry inside file data)",
            )),
            // The reader failed (its error is reported instead).
            Err(_) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer archive ended inside a file",
            )),
        }
    }
}

impl Read for PieceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            self.next_piece()?;
        }
    }
}

struct Meta {
    uid: u64,
    gid: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// PAX time: `SECONDS[.FRACTION]`, possibly negative.
fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    if secs < 0 && nanos > 0 {
        // -1.5 means 1.5 s before the epoch.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// Names in a directory (without `.` and `..`).
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Remove `name` in `dir` (never following it); directories recursively.
fn remove_all(dir: &OwnedFd, name: &[u8], is_root: bool) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        return Ok(());
    }
    let sub = rustix::fs::openat(dir, name, dir_flags(), Mode::empty())?;
    if !is_root {
        let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    }
    for child in list_dir(&sub)? {
        remove_all(&sub, &child, is_root)?;
    }
    drop(sub);
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: Option<sha2::Sha256>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_clamps() {
        let c = |s: &str| {
            clean_path(s.as_bytes())
                .into_iter()
                .map(|c| String::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("/")
        };
        assert_eq!(c("./a/b/"), "a/b");
        assert_eq!(c("/etc/passwd"), "etc/passwd");
        assert_eq!(c("../../etc/passwd"), "etc/passwd");
        assert_eq!(c("a/../../b"), "b");
        assert_eq!(c("a/./b/../c"), "a/c");
        assert_eq!(c(""), "");
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
    }
}
