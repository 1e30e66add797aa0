//! How the process's allocator behaves under streaming transfers (glibc only).
//!
//! glibc hands the free memory at the top of a heap back to the kernel as soon as it
//! exceeds `M_TRIM_THRESHOLD` (128 KiB). A push streams a GiB through buffers of a few
//! hundred KiB that are allocated and freed continuously (h2's frame buffer grows by a new
//! allocation whenever the frames it handed out still hold the old one; the upload
//! pipeline's write batches), so every release was followed by page faults zeroing the
//! same memory again: `perf` counted them under h2's `BytesMut::reserve` and the socket
//! reads, and a push used 10–15% more CPU than with the memory kept. So free memory is
//! kept (up to [`KEEP_FREE`] per heap) while transfers run, and given back by an explicit
//! trim when the last one ends, so an idle server holds no more than before.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Free memory a heap keeps before returning it to the kernel while transfers run.
pub const KEEP_FREE: usize = 32 << 20;
/// Allocations at least this large get a mapping of their own (glibc's default is 128 KiB,
/// raised dynamically; setting the trim threshold turns that adjustment off).
const OWN_MAPPING: usize = 8 << 20;

/// How long no transfer must have run before the kept memory is released: the requests of a
/// chunked upload, and a client's next layer, follow each other closely.
const RELEASE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Transfers begun so far, so a pending release sees whether another began meanwhile.
static BEGUN: AtomicU64 = AtomicU64::new(0);

/// Apply the allocator settings (at start, before serving).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE as libc::c_int);
    }
}

/// Give free memory back to the kernel now (at the end of start-up, after transfers).
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A transfer in progress: held while a request body streams in. When none has run for
/// [`RELEASE_AFTER`], the memory kept for transfers is released.
pub struct Transfer(());

impl Transfer {
    pub fn begin() -> Transfer {
        BEGUN.fetch_add(1, Ordering::AcqRel);
        ACTIVE.fetch_add(1, Ordering::AcqRel);
        Transfer(())
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if ACTIVE.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let begun = BEGUN.load(Ordering::Acquire);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return release();
        };
        rt.spawn(async move {
            tokio::time::sleep(RELEASE_AFTER).await;
            if quiet_since(begun) {
                let _ = tokio::task::spawn_blocking(release).await;
            }
        });
    }
}

/// No transfer runs and none began since `begun` was read.
fn quiet_since(begun: u64) -> bool {
    ACTIVE.load(Ordering::Acquire) == 0 && BEGUN.load(Ordering::Acquire) == begun
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn released_only_once_no_transfer_began_for_a_while() {
        tune();
        let (a, b) = (Transfer::begin(), Transfer::begin());
        drop(a);
        let begun = BEGUN.load(Ordering::Acquire);
        assert!(!quiet_since(begun), "one transfer still runs");
        drop(b);
        assert!(quiet_since(begun));
        let c = Transfer::begin();
        drop(c);
        assert!(
            !quiet_since(begun),
            "a transfer began after the first release was planned"
        );
    }
}
