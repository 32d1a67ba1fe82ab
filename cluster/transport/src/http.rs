//! [`ShardTransport`] over HTTP: one pooled client, signed requests, bounded timeouts, typed
//! errors. Shard bytes move in long streamed requests, never one request per piece.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dos_protocol::shard::{ShardEntry, TempCreated, TempStatus, Verified, paths};
use dos_protocol::{ContentHash, ServerInfo};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::{PieceStream, ShardBody, ShardError, ShardTransport};

/// Header of a 409 answer to a write: the raw bytes the upload holds.
pub const RECEIVED_HEADER: &str = "x-dos-received";

/// Tries per inter-server call (see [`HttpTransport::send`]).
const ATTEMPTS: u32 = 3;
const SHORT: Duration = Duration::from_secs(30);
const COMMIT: Duration = Duration::from_secs(120);
const LONG: Duration = Duration::from_secs(3600);

/// Whether a call may be repeated after a failure whose effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only when the request surely never arrived (connection refused or reset on connect).
    IfNotSent,
    /// Also after a timeout or a 502/503/504: repeating it changes nothing.
    Idempotent,
}

/// HTTP (or HTTPS) to data servers.
#[derive(Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    /// Signs every request (data servers of a secured cluster refuse unsigned ones).
    secret: Option<Arc<[u8]>>,
    /// `http` or `https`: every data server of a cluster speaks the same.
    scheme: &'static str,
}

impl HttpTransport {
    /// A transport whose connections time out after `connect_timeout`, signing with
    /// `secret` when given. Redirects are never followed (they would carry the signature
    /// elsewhere).
    pub fn new(connect_timeout: Duration, secret: Option<&[u8]>) -> Result<Self, ShardError> {
        Self::with_tls(connect_timeout, secret, None)
    }

    /// Like [`new`](Self::new); with `tls`, every call is HTTPS, and data servers must show
    /// a certificate that configuration trusts (the cluster's CA) for their address.
    pub fn with_tls(
        connect_timeout: Duration,
        secret: Option<&[u8]>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ShardError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        // reqwest needs a process-wide rustls provider even for plain HTTP (ring is the only
        // one built); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(32)
            // Under the data servers' 30 s request head deadline, which also closes idle
            // connections: this side lets go of them first.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ShardError::Failed(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            secret: secret.map(Arc::from),
            scheme,
        })
    }

    /// A request to `{scheme}://{addr}{path_and_query}`, signed when a secret is set.
    fn req(
        &self,
        method: reqwest::Method,
        server: &ServerInfo,
        path_and_query: &str,
    ) -> reqwest::RequestBuilder {
        self.signed(method, server, path_and_query, None, None)
    }

    /// A request signed for `server` alone, with its `Range` and the SHA-256 of a body sent
    /// whole (both covered by the signature; see `dos_protocol::signature`).
    fn signed(
        &self,
        method: reqwest::Method,
        server: &ServerInfo,
        path_and_query: &str,
        range: Option<&str>,
        body_sha256: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(
            method.clone(),
            format!("{}://{}{path_and_query}", self.scheme, server.addr),
        );
        if let Some(r) = range {
            rb = rb.header(reqwest::header::RANGE, r);
        }
        // A label for the logs of both sides, not covered by the signature.
        if let Some(id) = crate::request_id::RequestId::current() {
            rb = rb.header(crate::request_id::HEADER, id.as_str());
        }
        if let Some(d) = body_sha256 {
            rb = rb.header(dos_protocol::headers::BODY_SHA256, d);
        }
        match &self.secret {
            Some(secret) => {
                let req = dos_protocol::signature::Request {
                    method: method.as_str(),
                    path_and_query,
                    server_id: &server.id.0,
                    range,
                    body_sha256,
                };
                rb.header(
                    dos_protocol::headers::SIGNATURE,
                    dos_protocol::signature::sign(
                        secret,
                        &req,
                        dos_protocol::signature::unix_secs(),
                    ),
                )
            }
            None => rb,
        }
    }

    /// Sends the request `build` makes, retrying transient failures: a connection that could
    /// not be made (the request never reached the server) always, and for `Retry::Idempotent`
    /// calls also a timeout or a 502/503/504. At most [`ATTEMPTS`] tries, backing off.
    async fn send(
        &self,
        server: &ServerInfo,
        retry: Retry,
        timeout: Duration,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ShardError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let last = attempt >= ATTEMPTS;
            match build().timeout(timeout).send().await {
                Ok(resp)
                    if !last
                        && retry == Retry::Idempotent
                        && matches!(resp.status().as_u16(), 502..=504) =>
                {
                    tracing::debug!(server = %server.id, status = %resp.status(), attempt, "data server busy; retrying");
                }
                Ok(resp) => return check(resp).await,
                Err(e)
                    if !last
                        && ((e.is_connect() && !e.is_timeout())
                            || (retry == Retry::Idempotent && e.is_timeout())) =>
                {
                    tracing::debug!(server = %server.id, error = %e, attempt, "data server call failed; retrying");
                }
                Err(e) => return Err(transport_error(e, timeout)),
            }
            tokio::time::sleep(delay).await;
            delay *= 3;
            attempt += 1;
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        server: &ServerInfo,
        retry: Retry,
        timeout: Duration,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, ShardError> {
        let resp = self.send(server, retry, timeout, build).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        serde_json::from_slice(&body).map_err(|e| ShardError::Malformed(e.to_string()))
    }

    async fn read_range(
        &self,
        server: &ServerInfo,
        path: String,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        if start >= end {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let range = format!("bytes={start}-{}", end - 1);
        let resp = self
            .send(server, Retry::IfNotSent, LONG, || {
                self.signed(reqwest::Method::GET, server, &path, Some(&range), None)
            })
            .await?;
        Ok(Box::pin(
            resp.bytes_stream()
                .map(|r| r.map_err(|e| transport_error(e, LONG))),
        ))
    }
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> ShardError {
    if e.is_timeout() {
        ShardError::Timeout(timeout)
    } else if e.is_decode() {
        ShardError::Malformed(e.to_string())
    } else {
        ShardError::Unreachable(e.to_string())
    }
}

/// A success answer, or the error its status stands for.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ShardError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let received = resp
        .headers()
        .get(RECEIVED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let message = resp.text().await.unwrap_or_default().trim().to_string();
    Err(match status.as_u16() {
        404 => ShardError::NotFound,
        403 => ShardError::Denied,
        409 => match received {
            Some(received) => ShardError::OffsetMismatch { received },
            None => ShardError::Malformed(format!("409 without {RECEIVED_HEADER}: {message}")),
        },
        412 => ShardError::TooNew,
        507 => ShardError::Full,
        400..=499 => ShardError::Refused(format!("{status}: {message}")),
        _ => ShardError::Failed(format!("{status}: {message}")),
    })
}

#[async_trait]
impl ShardTransport for HttpTransport {
    async fn create_temp(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardError> {
        let path = paths::create_temp(hash, shard, length);
        let created: TempCreated = self
            .json(server, Retry::IfNotSent, SHORT, || {
                self.req(reqwest::Method::POST, server, &path)
            })
            .await?;
        Ok(created.id)
    }

    async fn write_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        offset: u64,
        body: PieceStream,
    ) -> Result<TempStatus, ShardError> {
        let path = paths::write_temp(id, offset);
        let body = body.map(Ok::<_, std::io::Error>);
        // A streamed body cannot be replayed: one try. The data server cuts off an upload
        // that stalls.
        let resp = self
            .req(reqwest::Method::PATCH, server, &path)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| transport_error(e, LONG))?;
        let body = check(resp)
            .await?
            .bytes()
            .await
            .map_err(|e| transport_error(e, LONG))?;
        serde_json::from_slice(&body).map_err(|e| ShardError::Malformed(e.to_string()))
    }

    async fn temp_status(&self, server: &ServerInfo, id: &str) -> Result<TempStatus, ShardError> {
        let path = paths::temp(id);
        self.json(server, Retry::Idempotent, SHORT, || {
            self.req(reqwest::Method::GET, server, &path)
        })
        .await
    }

    async fn commit(
        &self,
        server: &ServerInfo,
        id: &str,
        length: u64,
        hash: &ContentHash,
    ) -> Result<(), ShardError> {
        let path = paths::commit_temp(id, length, hash);
        self.send(server, Retry::IfNotSent, COMMIT, || {
            self.req(reqwest::Method::PUT, server, &path)
        })
        .await
        .map(drop)
    }

    async fn abort(&self, server: &ServerInfo, id: &str) -> Result<(), ShardError> {
        let path = paths::temp(id);
        self.send(server, Retry::IfNotSent, SHORT, || {
            self.req(reqwest::Method::DELETE, server, &path)
        })
        .await
        .map(drop)
    }

    async fn put_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        raw: Bytes,
    ) -> Result<(), ShardError> {
        let path = paths::shard(hash, shard);
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw));
        // The body is in memory, so the request can be sent again; storing a shard twice
        // leaves one copy.
        self.send(server, Retry::Idempotent, COMMIT, || {
            self.signed(reqwest::Method::PUT, server, &path, None, Some(&digest))
                .body(raw.clone())
        })
        .await
        .map(drop)
    }

    async fn read_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        self.read_range(server, paths::shard(hash, shard), start, end)
            .await
    }

    async fn read_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        self.read_range(server, paths::temp_data(id), start, end)
            .await
    }

    async fn remove_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardError> {
        let path = paths::remove_shard(hash, shard, min_age);
        self.send(server, Retry::IfNotSent, SHORT, || {
            self.req(reqwest::Method::DELETE, server, &path)
        })
        .await
        .map(drop)
    }

    async fn verify_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<u64, ShardError> {
        let path = paths::verify_shard(hash, shard);
        let v: Verified = self
            .json(server, Retry::Idempotent, LONG, || {
                self.req(reqwest::Method::POST, server, &path)
            })
            .await?;
        Ok(v.length)
    }

    async fn list_shards(
        &self,
        server: &ServerInfo,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        let path = paths::list_shards(after, limit);
        self.json(server, Retry::Idempotent, Duration::from_secs(60), || {
            self.req(reqwest::Method::GET, server, &path)
        })
        .await
    }

    async fn set_draining(&self, server: &ServerInfo, draining: bool) -> Result<(), ShardError> {
        let path = paths::draining(draining);
        self.send(server, Retry::Idempotent, SHORT, || {
            self.req(reqwest::Method::PUT, server, &path)
        })
        .await
        .map(drop)
    }
}
