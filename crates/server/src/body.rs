//! Request bodies at the connection layer: an idle timeout on every request body, and
//! refusals that reach the client.
//!
//! [`guard`] wraps a request's body before the router sees it:
//! - [`GuardedBody`] ends the body with an error when no byte arrives for the body idle
//!   timeout (idle time, not total time: a slow, steady upload is never cut). Handlers see
//!   a failed body; an upload keeps what arrived and can be resumed.
//! - When a handler answers without reading the whole body (a 413 for a 5 MiB manifest,
//!   a refused upload, a 401), the unread body is handed to [`Tail`], which wraps the
//!   response body: once the response is sent, it reads and discards what the client is
//!   still sending (bounded in bytes and idle time) before the response ends. Without it,
//!   HTTP/2 resets the stream with `CANCEL` before the response is complete (curl:
//!   "Stream error in the HTTP/2 framing layer") and HTTP/1.1 closes a socket with unread
//!   data, which resets the connection under a client still sending. What is left after
//!   the bound is handled by closing: HTTP/1.1 lingers (see `conn`), HTTP/2 resets the
//!   stream with `NO_ERROR` after the complete response, as RFC 9113 §8.1 allows.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most bytes of an unread request body read and discarded after an early response.
const DRAIN_BYTES: u64 = 64 << 20;

/// The error a stalled body ends with.
#[derive(Debug)]
pub struct BodyIdle(pub Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no bytes of the request body arrived for {} s (limits.body_idle_timeout_secs); \
             what arrived before is kept: ask GET on the upload URL for the offset and resume \
             from there",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyIdle {}

/// A request body with an idle timeout that hands its unread rest to the response.
pub struct GuardedBody {
    inner: Option<Incoming>,
    idle: Duration,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Where the unread rest goes when the handler drops the body early.
    rest: Option<oneshot::Sender<Incoming>>,
    failed: bool,
}

/// Wrap `body`; the receiver gets the unread rest if the handler drops it early (`None`
/// for a body that is empty from the start: nothing can be left over).
pub fn guard(body: Incoming, idle: Duration) -> (GuardedBody, Option<oneshot::Receiver<Incoming>>) {
    let (rest, rx) = if body.is_end_stream() {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    (
        GuardedBody {
            inner: Some(body),
            idle,
            last: Instant::now(),
            sleep: None,
            rest,
            failed: false,
        },
        rx,
    )
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Only a timestamp per frame; the timer is re-armed when it fires.
                this.last = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let deadline = tokio::time::Instant::from_std(this.last + this.idle);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                if this.last.elapsed() >= this.idle {
                    this.failed = true;
                    this.inner = None;
                    return Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))));
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        if let (Some(body), Some(rest)) = (self.inner.take(), self.rest.take())
            && !body.is_end_stream()
        {
            let _ = rest.send(body);
        }
    }
}

/// Wrap `resp`'s body so that an unread request body is drained after it (see the module
/// docs). Responses to requests without a body are returned as they are.
pub fn attach(
    resp: axum::response::Response,
    rest: Option<oneshot::Receiver<Incoming>>,
    idle: Duration,
) -> axum::response::Response {
    let Some(rest) = rest else {
        return resp;
    };
    resp.map(|body| {
        Body::new(Tail {
            body,
            rest: Some(rest),
            drain: None,
            drained: 0,
            idle,
            sleep: None,
        })
    })
}

/// A response body that, after its last byte, drains the request body left unread.
struct Tail {
    body: Body,
    rest: Option<oneshot::Receiver<Incoming>>,
    /// The unread request body, kept until this response body is dropped (after the end
    /// of the response has been sent).
    drain: Option<Incoming>,
    drained: u64,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Tail {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Some(frame) = ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            return Poll::Ready(Some(frame));
        }
        // The response is complete; was the request body left unread?
        if let Some(mut rx) = this.rest.take()
            && let Ok(body) = rx.try_recv()
        {
            this.drain = Some(body);
        }
        let Some(body) = this.drain.as_mut() else {
            return Poll::Ready(None);
        };
        while this.drained < DRAIN_BYTES && !body.is_end_stream() {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                    this.sleep = None;
                }
                Poll::Ready(Some(Err(_)) | None) => break,
                Poll::Pending => {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)));
                    ready!(sleep.as_mut().poll(cx));
                    break;
                }
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
