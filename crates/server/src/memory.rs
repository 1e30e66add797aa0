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

use std::sync::atomic::{AtomicUsize, Ordering};

/// Free memory a heap keeps before returning it to the kernel while transfers run.
pub const KEEP_FREE: usize = 32 << 20;
/// Allocations at least this large get a mapping of their own (glibc's default is 128 KiB,
/// raised dynamically; setting the trim threshold turns that adjustment off).
const OWN_MAPPING: usize = 8 << 20;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

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

/// A transfer in progress: held while a request body streams in. When the last one ends,
/// the memory kept for transfers is released.
pub struct Transfer(());

impl Transfer {
    pub fn begin() -> Transfer {
        ACTIVE.fetch_add(1, Ordering::AcqRel);
        Transfer(())
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if ACTIVE.fetch_sub(1, Ordering::AcqRel) == 1 {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(release)),
                Err(_) => release(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_transfer_to_end_releases() {
        tune();
        let before = ACTIVE.load(Ordering::Acquire);
        let (a, b) = (Transfer::begin(), Transfer::begin());
        assert_eq!(ACTIVE.load(Ordering::Acquire), before + 2);
        drop(a);
        drop(b);
        assert_eq!(ACTIVE.load(Ordering::Acquire), before);
    }
}
