//! Operations endpoints and instrumentation: `/readyz` (readiness: every dependency
//! answers), `/metrics` (Prometheus text format, through the `metrics` facade and
//! `metrics-exporter-prometheus`), and the [`observe`] middleware that counts requests by
//! route class and status, bytes in and out, and push/pull latency.
//!
//! `/healthz` (in [`crate::routes`]) is liveness; `/readyz` ([`crate::routes::readiness`])
//! is what a load balancer should route by: it fails (503, naming the dependency) while
//! the metadata database — or any other dependency registered with
//! [`Ops::add_readiness`], such as the S3 bucket — cannot be reached.
//!
//! `/metrics` is served on the main port and, by default, without authentication: it
//! carries counts and timings by route class only (no repository, user or tag names), it
//! is what Prometheus scrapers expect, and a separate port would be one more thing to
//! open through every load balancer and network policy. `[metrics] bearer_token` makes it
//! require `Authorization: Bearer …`; `[metrics] enabled = false` removes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::MetricsConfig;
use crate::state::AppState;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A readiness check: `Err(reason)` while the dependency cannot be used.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;
/// Refreshes gauges (pool use, uploads in progress) right before a scrape.
pub type GaugeUpdater = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// Operations hooks of one server.
#[derive(Clone, Default)]
pub struct Ops {
    checks: Vec<(&'static str, ReadinessCheck)>,
    gauges: Vec<GaugeUpdater>,
    /// `/metrics` settings.
    pub metrics: MetricsConfig,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Ops")
            .field("checks", &names)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Ops {
    /// Make `/readyz` also require `check` (named `name` in its answer, e.g. "object store").
    pub fn add_readiness<F, Fut>(&mut self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as BoxFuture<_>)));
    }

    /// Run every registered readiness check (each bounded by [`CHECK_TIMEOUT`]):
    /// `(name, ok, what was seen)`.
    pub async fn run_checks(&self) -> Vec<(&'static str, bool, String)> {
        let mut out = Vec::new();
        for (name, check) in &self.checks {
            out.push(match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => (*name, true, format!("{name} answers")),
                Ok(Err(e)) => (*name, false, format!("{name} unreachable: {e}")),
                Err(_) => (
                    *name,
                    false,
                    format!(
                        "{name} unreachable: no answer within {}s",
                        CHECK_TIMEOUT.as_secs()
                    ),
                ),
            });
        }
        out
    }

    /// Run `update` before every scrape of `/metrics` (to set gauges).
    pub fn add_gauges<F, Fut>(&mut self, update: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.gauges
            .push(Arc::new(move || Box::pin(update()) as BoxFuture<()>));
    }
}

/// The process-wide Prometheus recorder (installed on first use; one per process, shared
/// by every app built in it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may stay empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "berth_http_requests_total",
        "HTTP requests by route class, method and status"
    );
    describe_histogram!(
        "berth_http_request_duration_seconds",
        "time to the response headers, by route class"
    );
    describe_counter!("berth_http_bytes_in_total", "request body bytes received");
    describe_counter!("berth_http_bytes_out_total", "response body bytes sent");
    describe_histogram!(
        "berth_push_duration_seconds",
        "upload requests (POST/PATCH/PUT) and manifest PUTs, by route class"
    );
    describe_histogram!(
        "berth_pull_duration_seconds",
        "blob and manifest GETs, until the last byte was sent, by route class"
    );
    describe_counter!(
        "berth_storage_errors_total",
        "storage failures answered with 5xx, by kind (io, database, unavailable)"
    );
    describe_counter!(
        "berth_refusals_total",
        "requests or connections refused by a bound (connection limits, timeouts, body \
         sizes, upload sessions) or because the storage is full (storage_full, HTTP 507), \
         by kind"
    );
    describe_gauge!(
        "berth_db_pool_connections",
        "metadata database connections of this replica, by state (idle, in_use)"
    );
    describe_gauge!(
        "berth_db_pool_max_connections",
        "the most metadata database connections this replica opens"
    );
    describe_gauge!(
        "berth_uploads_in_progress",
        "upload sessions started and not yet finished or cancelled (all replicas)"
    );
}

/// The route class of a path: a bounded label set (never a repository name).
pub fn route_class(path: &str) -> &'static str {
    if let Some(rest) = path.strip_prefix("/v2") {
        return match rest {
            "" | "/" => "base",
            "/_catalog" => "catalog",
            _ if rest.contains("/blobs/uploads") => "upload",
            _ if rest.contains("/blobs/") => "blob",
            _ if rest.contains("/manifests/") => "manifest",
            _ if rest.ends_with("/tags/list") => "tags",
            _ if rest.contains("/referrers/") => "referrers",
            _ => "v2_other",
        };
    }
    match path {
        "/service/token" => "token",
        "/healthz" | "/readyz" => "health",
        "/metrics" => "metrics",
        _ if path.starts_with("/api/") => "api",
        _ => "console",
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Middleware: count and time every request (see the module documentation).
pub async fn observe(req: Request, next: Next) -> Response {
    prometheus();
    let class = route_class(req.uri().path());
    let method = req.method().clone();
    let started = Instant::now();
    let req = req.map(|b| {
        Body::new(Counted {
            inner: b,
            bytes: metrics::counter!("berth_http_bytes_in_total", "class" => class),
            on_end: None,
        })
    });
    let resp = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = resp.status();
    metrics::counter!(
        "berth_http_requests_total",
        "class" => class,
        "method" => method_label(&method),
        "status" => status.as_str().to_owned()
    )
    .increment(1);
    metrics::histogram!("berth_http_request_duration_seconds", "class" => class).record(elapsed);
    let is_push = (class == "upload" && method != Method::GET && method != Method::HEAD)
        || (class == "manifest" && method == Method::PUT);
    if is_push {
        metrics::histogram!("berth_push_duration_seconds", "class" => class).record(elapsed);
    }
    let is_pull = (class == "blob" || class == "manifest") && method == Method::GET;
    let on_end = (is_pull && status.is_success()).then(|| {
        (
            metrics::histogram!("berth_pull_duration_seconds", "class" => class),
            started,
        )
    });
    resp.map(|b| {
        Body::new(Counted {
            inner: b,
            bytes: metrics::counter!("berth_http_bytes_out_total", "class" => class),
            on_end,
        })
    })
}

/// A body that counts its bytes (and, for pulls, records the time to its last byte),
/// keeping the inner body's size hint so `Content-Length` framing is unchanged.
struct Counted {
    inner: Body,
    bytes: Counter,
    on_end: Option<(Histogram, Instant)>,
}

impl Counted {
    fn finish(&mut self) {
        if let Some((histogram, started)) = self.on_end.take() {
            histogram.record(started.elapsed().as_secs_f64());
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.increment(data.len() as u64);
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // A pull whose body was complete but never polled to its end (HEAD-like empty
        // bodies, clients closing early) still counts.
        self.finish();
    }
}

/// Count a storage failure answered with a 5xx.
pub fn storage_error(kind: &'static str) {
    metrics::counter!("berth_storage_errors_total", "kind" => kind).increment(1);
}

/// `GET /metrics`: the Prometheus text exposition format.
pub async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.ops.metrics.enabled {
        return (
            StatusCode::NOT_FOUND,
            "metrics are disabled ([metrics] enabled = false)\n",
        )
            .into_response();
    }
    if let Some(token) = &state.ops.metrics.bearer_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            use sha2::Digest as _;
            // Compare digests: no early exit on the first differing byte.
            sha2::Sha256::digest(g.as_bytes()) == sha2::Sha256::digest(token.as_bytes())
        });
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                "the metrics endpoint requires Authorization: Bearer <[metrics] bearer_token>\n",
            )
                .into_response();
        }
    }
    let handle = prometheus();
    for update in &state.ops.gauges {
        if tokio::time::timeout(CHECK_TIMEOUT, update()).await.is_err() {
            tracing::warn!("a metrics gauge did not update within {CHECK_TIMEOUT:?}");
        }
    }
    // The connection layer's refusals (crate::limits) and 507 full-disk refusals, counted
    // there without the metrics facade on the hot path: exported at scrape time.
    for (kind, n) in state.refusals.snapshot() {
        metrics::counter!("berth_refusals_total", "kind" => kind).absolute(n);
    }
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes_are_bounded() {
        for (path, class) in [
            ("/v2/", "base"),
            ("/v2", "base"),
            ("/v2/_catalog", "catalog"),
            ("/v2/library/nginx/manifests/latest", "manifest"),
            ("/v2/a/b/c/blobs/sha256:00", "blob"),
            ("/v2/a/blobs/uploads/", "upload"),
            ("/v2/a/blobs/uploads/123", "upload"),
            ("/v2/a/tags/list", "tags"),
            ("/v2/a/referrers/sha256:00", "referrers"),
            ("/service/token", "token"),
            ("/api/v1/projects", "api"),
            ("/readyz", "health"),
            ("/metrics", "metrics"),
            ("/projects/library", "console"),
        ] {
            assert_eq!(route_class(path), class, "{path}");
        }
    }
}
