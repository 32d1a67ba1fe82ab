//! What every listener measures of its requests, and the `/metrics` answer. The binary
//! installs the Prometheus exporter and hands a [`Metrics`] down; the servers record through
//! the `metrics` facade (a no-op when no exporter is installed).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
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
            Arc::new(Handles::new(families)),
            count_request,
        ))
}

/// The metric handles of one listener, made on first use and kept: a request then records
/// through a handle it finds by route, method and status, with no label strings built and
/// no registry lookup (those cost a few percent of a 1 ms request).
struct Handles {
    families: RequestMetrics,
    received: OnceLock<metrics::Counter>,
    sent: OnceLock<metrics::Counter>,
    /// By route pattern: per method its duration histogram, per method and status its
    /// request counter.
    routes: Mutex<HashMap<String, RouteHandles>>,
}

#[derive(Default)]
struct RouteHandles {
    durations: Vec<(Method, metrics::Histogram)>,
    requests: Vec<(Method, u16, metrics::Counter)>,
}

impl Handles {
    fn new(families: RequestMetrics) -> Self {
        Self {
            families,
            received: OnceLock::new(),
            sent: OnceLock::new(),
            routes: Mutex::default(),
        }
    }

    fn received(&self) -> metrics::Counter {
        self.received
            .get_or_init(|| metrics::counter!(self.families.received, &self.families.labels))
            .clone()
    }

    fn sent(&self) -> metrics::Counter {
        self.sent
            .get_or_init(|| metrics::counter!(self.families.sent, &self.families.labels))
            .clone()
    }

    /// Records one request of `route` (a pattern, or `None`: unmatched).
    fn record(&self, route: Option<&str>, method: &Method, status: u16, took: Duration) {
        let route = route.unwrap_or("unmatched");
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteHandles::default());
        }
        let Some(handles) = routes.get_mut(route) else {
            return;
        };
        let labels = || {
            let mut labels = self.families.labels.clone();
            labels.push((
                "route",
                if route == "unmatched" {
                    route.to_owned()
                } else {
                    route_label(route)
                },
            ));
            labels.push(("method", method.as_str().to_owned()));
            labels
        };
        match handles.durations.iter().find(|(m, _)| m == method) {
            Some((_, h)) => h.record(took.as_secs_f64()),
            None => {
                let h = metrics::histogram!(self.families.duration, &labels());
                h.record(took.as_secs_f64());
                handles.durations.push((method.clone(), h));
            }
        }
        match handles
            .requests
            .iter()
            .find(|(m, s, _)| m == method && *s == status)
        {
            Some((_, _, c)) => c.increment(1),
            None => {
                let mut l = labels();
                l.push(("status", status.to_string()));
                let c = metrics::counter!(self.families.requests, &l);
                c.increment(1);
                handles.requests.push((method.clone(), status, c));
            }
        }
    }
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

async fn count_request(State(handles): State<Arc<Handles>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let req = req.map(|body| Body::new(Counted::new(body, handles.received())));
    let resp = next.run(req).await;
    let route = resp.extensions().get::<MatchedPath>();
    handles.record(
        route.map(MatchedPath::as_str),
        &method,
        resp.status().as_u16(),
        started.elapsed(),
    );
    let sent = handles.sent();
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
