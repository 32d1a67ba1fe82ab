//! The HTTP listener of every server (API and data servers): one accept loop with the limits a
//! server exposed to a network needs, which `axum::serve` does not offer. A request head must
//! arrive within [`ConnLimits::header_read_timeout`] (a client sending half a head is cut off,
//! not kept forever), a response the client stops reading is cut off after
//! [`ConnLimits::write_timeout`] (so unread responses cannot hold request slots), at most
//! [`ConnLimits::max_connections`] connections are served at once (past that, new ones wait in
//! the kernel's backlog instead of using up descriptors), and every connection gets
//! TCP_NODELAY. With a TLS configuration every connection is TLS (rustls), its handshake
//! bounded by the head deadline. On cancellation it stops accepting and lets requests in
//! flight finish, for up to [`DRAIN`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub mod metrics;
pub use metrics::{Metrics, RequestMetrics, track_requests};

/// How long requests in flight may take to finish after the listener is cancelled.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A request head (line and headers) must arrive within this once the connection waits
    /// for it; so a keep-alive connection left idle this long is closed too (clients of
    /// this project keep idle connections for less: see their pool timeouts).
    pub header_read_timeout: Duration,
    /// A response the client takes nothing of for this long (its receive window stays full)
    /// is cut off and its connection closed, freeing the request slot it held.
    pub write_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            header_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// A connection as served: TCP with a write deadline, maybe inside TLS.
type Timed = std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<tokio::net::TcpStream>>>;

/// Serves `router` on `listener` with `limits` (and TLS when `tls` is given) until `cancel`,
/// then lets requests in flight finish (up to [`DRAIN`]). `what` names the listener in logs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    limits: ConnLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    what: &'static str,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let mut timed = tokio_io_timeout::TimeoutStream::new(tcp);
        timed.set_write_timeout(Some(limits.write_timeout));
        let timed: Timed = Box::pin(timed);
        let service = hyper_util::service::TowerToHyperService::new(router.clone().map_request(
            |req: http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
        ));
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(timed), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                // The handshake runs on the connection's own task, bounded like a request
                // head, so a client that never finishes it holds only its slot, briefly.
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(timed);
                    let stream =
                        match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
        }
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = what,
            "requests still in flight {DRAIN:?} after shutdown; closing them"
        );
    }
}
