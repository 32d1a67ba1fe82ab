//! What every listener measures of its requests, and the `/metrics` answer. The binary
//! installs the Prometheus exporter and hands a [`Metrics`] down; the servers record through
//! the `metrics` facade (a no-op when no exporter is installed).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};

use crate::Worker;

/// How often the exporter's upkeep runs (it folds histogram samples nobody scraped yet).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// This process's metrics as its binary set them up: the Prometheus text of everything
/// recorded so far, and the exporter's periodic upkeep.
#[derive(Clone)]
pub struct Metrics {
    render: Arc<dyn Fn() -> String + Send + Sync>,
    upkeep: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(
        render: impl Fn() -> String + Send + Sync + 'static,
        upkeep: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            render: Arc::new(render),
            upkeep: Arc::new(upkeep),
        }
    }

    /// Everything recorded so far, in the Prometheus text format.
    pub fn render(&self) -> String {
        (self.render)()
    }

    /// The `/metrics` answer.
    pub fn response(&self) -> Response {
        let mut resp = self.render().into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    /// The worker that runs the exporter's upkeep, for the owner's supervisor.
    pub fn upkeep_worker(&self) -> Arc<dyn Worker> {
        let upkeep = self.upkeep.clone();
        crate::every("metrics upkeep", UPKEEP_EVERY, move || {
            upkeep();
            async {}
        })
    }
}

/// A listener of its own that serves only `GET /metrics` (dosfs's `--metrics ADDR`):
/// `refresh` sets the gauges read off the owner's state before each scrape.
pub fn router(metrics: Metrics, refresh: impl Fn() + Send + Sync + 'static) -> Router {
    let refresh = Arc::new(refresh);
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, refresh) = (metrics.clone(), refresh.clone());
            async move {
                refresh();
                metrics.response()
            }
        }),
    )
}

/// The families one listener records its requests in, and labels they all carry.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    /// Counter, by route, method and status.
    pub requests: &'static str,
    /// Histogram of the time to the response head, in seconds, by route and method.
    pub duration: &'static str,
    /// Counters of body bytes received and sent.
    pub received: &'static str,
    pub sent: &'static str,
    /// Labels on every family (a data server's id).
    pub labels: Vec<(&'static str, String)>,
}

/// `router` with every request counted and timed by route (its pattern, `unmatched` for
/// none), method and status, and its body bytes counted both ways.
pub fn track_requests(router: Router, families: RequestMetrics) -> Router {
    router
        .route_layer(middleware::from_fn(note_route))
        .layer(middleware::from_fn_with_state(
            Arc::new(families),
            count_request,
        ))
}

/// Hands the matched route to [`count_request`], which runs before routing.
async fn note_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = next.run(req).await;
    if let Some(route) = route {
        resp.extensions_mut().insert(route);
    }
    resp
}

async fn count_request(
    State(families): State<Arc<RequestMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let received = metrics::counter!(families.received, &families.labels);
    let req = req.map(|body| Body::new(Counted::new(body, received)));
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| route_label(p.as_str()));
    let mut labels = families.labels.clone();
    labels.push(("route", route));
    labels.push(("method", method));
    metrics::histogram!(families.duration, &labels).record(started.elapsed().as_secs_f64());
    labels.push(("status", resp.status().as_str().to_owned()));
    metrics::counter!(families.requests, &labels).increment(1);
    let sent = metrics::counter!(families.sent, &families.labels);
    resp.map(|body| Body::new(Counted::new(body, sent)))
}

/// A route pattern as a label: `/shards/{hash}/{shard}` is `/shards/:hash/:shard` and
/// `/objects/{*name}` is `/objects/*name` (braces in label values trip simple parsers).
fn route_label(pattern: &str) -> String {
    pattern
        .replace("{*", "*")
        .replace('{', ":")
        .replace('}', "")
}

/// A body that counts the bytes passing through it (its length hint and end are the inner
/// body's, so `Content-Length` answers stay as they were).
struct Counted {
    inner: Body,
    counter: metrics::Counter,
}

impl Counted {
    fn new(inner: Body, counter: metrics::Counter) -> Self {
        Self { inner, counter }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.increment(data.len() as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_counted_body_keeps_its_length() {
        let app = track_requests(
            Router::new().route("/x/{id}", get(|| async { "hello" })),
            RequestMetrics {
                requests: "t_requests_total",
                duration: "t_duration_seconds",
                received: "t_received_bytes_total",
                sent: "t_sent_bytes_total",
                labels: vec![],
            },
        );
        let req = Request::builder().uri("/x/1").body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(hyper::body::Body::size_hint(resp.body()).exact(), Some(5));
        let body = axum::body::to_bytes(resp.into_body(), 100).await.unwrap();
        assert_eq!(&body[..], b"hello");
        let req = Request::builder()
            .uri("/nowhere")
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 404);
    }
}
