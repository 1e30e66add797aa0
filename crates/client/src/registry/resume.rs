//! A blob push that survives a cut connection without starting over: the bytes go in
//! streamed `PATCH` chunks ([`RESUME_CHUNK`], or the client's `chunk_size`); when the
//! connection breaks, the upload session is asked how far it got (`GET` on its location:
//! the `Range` it acknowledges, and its new location) and the rest follows, read from the
//! source from that offset (the caller's `open(offset)`, e.g. a `Range` request). The destination checks
//! the whole blob's digest when the upload is completed (`PUT ?digest=`), so a resumed
//! upload is verified as a whole; a session the destination lost is started again.

use std::future::Future;

use super::*;

/// What [`RegistryClient::push_blob_resumable`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobPush {
    /// The repository already had it: nothing sent.
    pub existed: bool,
    /// Mounted from another repository: nothing sent.
    pub mounted: bool,
    /// Body bytes sent in all attempts (the blob's size when nothing was cut).
    pub sent: u64,
    /// Times the upload continued after a cut, from the offset the destination had.
    pub resumed: u32,
}

/// Bytes per `PATCH`: what a cut can cost again (a destination keeps acknowledged chunks;
/// Distribution drops a whole session cut mid-chunk).
const RESUME_CHUNK: u64 = 2 << 20;

/// The source of one attempt: its stream and what was read past a chunk's end.
struct Source {
    stream: ByteStream,
    leftover: Option<Bytes>,
}

/// The next `len` bytes of `src`, as a stream of their own (a chunk's body).
fn take(src: Arc<tokio::sync::Mutex<Source>>, len: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (src, len),
        |(src, left)| async move {
            if left == 0 {
                return None;
            }
            let mut g = src.lock().await;
            let piece = match g.leftover.take() {
                Some(b) => b,
                None => match g.stream.next().await {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => return Some((Err(e), (src.clone(), 0))),
                    None => {
                        return Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the source ended before the blob's size",
                            )),
                            (src.clone(), 0),
                        ));
                    }
                },
            };
            let mut piece = piece;
            if piece.len() as u64 > left {
                g.leftover = Some(piece.split_off(left as usize));
            }
            let n = piece.len() as u64;
            drop(g);
            Some((Ok(piece), (src, left - n)))
        },
    ))
}

/// Wraps a source stream: counts what it yields into `sent`, and fails if it yields more
/// than `left` bytes (a source that ignored the requested offset).
struct Counted {
    inner: ByteStream,
    left: u64,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Stream for Counted {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                let n = b.len() as u64;
                if n > self.left {
                    return Poll::Ready(Some(Err(integrity(
                        "the source sent more bytes than the blob has left".into(),
                    ))));
                }
                self.left -= n;
                self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Some(Ok(b)))
            }
            other => other,
        }
    }
}

/// The offset after the bytes a `Range: 0-N` header acknowledges; `None` for `0-0` (empty
/// or one byte: ambiguous, as Distribution sends it for both) or a malformed header.
fn acknowledged(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(RANGE)?.to_str().ok()?;
    let v = v.trim().trim_start_matches("bytes=");
    let (start, end) = v.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start == 0 && end > 0).then_some(end + 1)
}

/// Whether a failed chunk is worth asking the session about: a cut connection, or an
/// answer to a body that arrived cut (a 400 for a short body, a 5xx) — not a refusal of
/// the credentials or the content.
fn transient(e: &ClientError) -> bool {
    // `Integrity` too: a body cut mid-way can surface as one (rustls' "unexpected EOF");
    // the destination checks the whole digest when the upload is completed anyway.
    matches!(
        e,
        ClientError::Connect(_)
            | ClientError::Io { .. }
            | ClientError::Integrity(_)
            | ClientError::Registry(_)
            | ClientError::NotFound(_)
    )
}

impl RegistryClient {
    /// Push one blob of `desc.size` bytes, read from the source by `open(offset)` (a
    /// stream of the blob from byte `offset` to its end). Skips a blob the repository
    /// has; with `mount_from` (same registry) tries a cross-repository mount first. A
    /// connection cut (or a 5xx) in the middle continues, up to `attempts` times in all
    /// with a growing pause, from the offset the destination acknowledges (see the module
    /// documentation) instead of from byte 0.
    pub async fn push_blob_resumable<F, Fut>(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        mount_from: Option<&str>,
        attempts: u32,
        open: F,
    ) -> Result<BlobPush>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<ByteStream>>,
    {
        let mut out = BlobPush::default();
        if self.blob_exists(image, &desc.digest, true).await? {
            out.existed = true;
            return Ok(out);
        }
        let Some((mut loc, ep)) = self.start_upload(image, &desc.digest, mount_from).await? else {
            out.mounted = true;
            return Ok(out);
        };
        let t = self.push_target(image, mount_from);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let chunk = self
            .inner
            .opts
            .chunk_size
            .filter(|c| *c > 0)
            .unwrap_or(RESUME_CHUNK);
        let mut offset = 0u64;
        let mut attempt = 1u32;
        let mut source: Option<Arc<tokio::sync::Mutex<Source>>> = None;
        while offset < desc.size {
            let result = async {
                let src = match &source {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(tokio::sync::Mutex::new(Source {
                            stream: open(offset).await?,
                            leftover: None,
                        }));
                        source = Some(s.clone());
                        s
                    }
                };
                // A short tail rides with the chunk before it: one request less (a layer
                // of 2 MiB that gzip made a little larger would otherwise take two).
                let left = desc.size - offset;
                let len = if left <= chunk + chunk / 2 {
                    left
                } else {
                    chunk
                };
                let body = Counted {
                    inner: take(src, len),
                    left: len,
                    sent: sent.clone(),
                };
                let rb = ep
                    .client
                    .patch(loc.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("content-range", format!("{offset}-{}", offset + len - 1))
                    .header(CONTENT_LENGTH, len)
                    .body(reqwest::Body::wrap_stream(body));
                let resp = self.send_once(&t, &ep, rb).await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(unexpected(resp, &format!("uploading {}", desc.digest)).await);
                }
                Ok((location(&resp, &ep)?, len))
            }
            .await;
            match result {
                Ok((next, len)) => {
                    loc = next;
                    offset += len;
                }
                Err(e) if transient(&e) && attempt < attempts => {
                    tracing::info!(digest = %desc.digest, offset, attempt, error = %e, "blob upload cut; resuming");
                    tokio::time::sleep(Duration::from_millis(500 << attempt.min(6))).await;
                    attempt += 1;
                    out.resumed += 1;
                    source = None;
                    // How far did it get? A session the destination dropped (CNCF
                    // Distribution cancels one cut in the middle of a chunk) or one that
                    // has nothing certain starts again.
                    let status = self.send_once(&t, &ep, ep.client.get(loc.clone())).await;
                    match status {
                        Ok(r)
                            if r.status() == StatusCode::NO_CONTENT
                                && acknowledged(r.headers()).is_some_and(|n| n <= desc.size) =>
                        {
                            offset = acknowledged(r.headers()).unwrap_or(0);
                            loc = location(&r, &ep)?;
                        }
                        _ => {
                            let Some((fresh, _)) =
                                self.start_upload(image, &desc.digest, mount_from).await?
                            else {
                                out.mounted = true;
                                return Ok(out);
                            };
                            loc = fresh;
                            offset = 0;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        out.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        let mut put_url = loc.clone();
        put_url
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let rb = ep.client.put(put_url).header(CONTENT_LENGTH, "0");
        let resp = match self.send_once(&t, &ep, rb).await {
            Ok(r) => r,
            // Cut on the way back: the blob may be there.
            Err(e) if transient(&e) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if self.blob_exists(image, &desc.digest, true).await? {
                    return Ok(out);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if resp.status() != StatusCode::CREATED {
            let e = unexpected(resp, &format!("completing the upload of {}", desc.digest)).await;
            if e.to_string().contains("DIGEST_INVALID") {
                return Err(ClientError::Integrity(e.to_string()));
            }
            return Err(e);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges() {
        let r = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RANGE, v.parse().unwrap());
            super::acknowledged(&h)
        };
        assert_eq!(r("0-1023"), Some(1024));
        assert_eq!(r("bytes=0-9"), Some(10));
        assert_eq!(r("0-0"), None);
        assert_eq!(r("5-9"), None);
        assert_eq!(r("junk"), None);
    }
}
