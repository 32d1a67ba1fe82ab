//! HTTP calls from an API server to data servers: one pooled client, bounded timeouts, typed
//! errors. Shard bytes move in long streamed requests, never one request per piece.

use std::time::Duration;

use bytes::Bytes;
use dos_protocol::{ContentHash, ServerInfo};
use futures::{Stream, StreamExt};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("data server {addr} unreachable: {source}")]
    Transport {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("data server {addr} answered {status}: {message}")]
    Status {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("data server {addr} sent a malformed answer")]
    Malformed { addr: String },
}

impl ShardError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ShardError::Status { status: 404, .. })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct TempStatus {
    pub received: u64,
    pub length: Option<u64>,
}

#[derive(Clone)]
pub struct ShardClient {
    http: reqwest::Client,
    /// Signs every request (data servers of a secured cluster refuse unsigned ones).
    secret: Option<std::sync::Arc<[u8]>>,
}

/// Tries per inter-server call (see [`ShardClient::send`]).
const ATTEMPTS: u32 = 3;

/// Whether a call may be repeated after a failure whose effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only when the request surely never arrived (connection refused or reset on connect).
    IfNotSent,
    /// Also after a timeout or a 502/503/504: repeating it changes nothing.
    Idempotent,
}

/// One committed shard on a data server (`GET /shards`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ShardEntry {
    pub hash: ContentHash,
    pub shard: u8,
    pub age_secs: u64,
}

/// A shard byte stream being received.
pub type ShardBody = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ShardError>> + Send>>;

impl ShardClient {
    pub fn new(connect_timeout: Duration, secret: Option<&[u8]>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http,
            secret: secret.map(std::sync::Arc::from),
        }
    }

    /// A request to `http://{addr}{path_and_query}`, signed when a secret is set.
    fn req(
        &self,
        method: reqwest::Method,
        addr: &str,
        path_and_query: &str,
    ) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(method.clone(), format!("http://{addr}{path_and_query}"));
        match &self.secret {
            Some(secret) => rb.header(
                dos_protocol::headers::SIGNATURE,
                dos_protocol::signature::sign(
                    secret,
                    method.as_str(),
                    path_and_query,
                    dos_protocol::signature::unix_secs(),
                ),
            ),
            None => rb,
        }
    }

    /// Sends the request `build` makes, retrying transient failures: a connection that could
    /// not be made (the request never reached the server) always, and for `Retry::Idempotent`
    /// calls also a timeout or a 502/503/504. At most [`ATTEMPTS`] tries, backing off.
    async fn send(
        &self,
        addr: &str,
        retry: Retry,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ShardError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let last = attempt >= ATTEMPTS;
            match build().send().await {
                Ok(resp)
                    if !last
                        && retry == Retry::Idempotent
                        && matches!(resp.status().as_u16(), 502..=504) =>
                {
                    tracing::debug!(addr, status = %resp.status(), attempt, "data server busy; retrying");
                }
                Ok(resp) => return Self::check(addr, resp).await,
                Err(e)
                    if !last
                        && ((e.is_connect() && !e.is_timeout())
                            || (retry == Retry::Idempotent && e.is_timeout())) =>
                {
                    tracing::debug!(addr, error = %e, attempt, "data server call failed; retrying");
                }
                Err(e) => return Err(Self::transport(addr)(e)),
            }
            tokio::time::sleep(delay).await;
            delay *= 3;
            attempt += 1;
        }
    }

    async fn check(addr: &str, resp: reqwest::Response) -> Result<reqwest::Response, ShardError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let message = resp.text().await.unwrap_or_default().trim().to_string();
        Err(ShardError::Status {
            addr: addr.to_string(),
            status,
            message,
        })
    }

    fn transport(addr: &str) -> impl FnOnce(reqwest::Error) -> ShardError + '_ {
        move |source| ShardError::Transport {
            addr: addr.to_string(),
            source,
        }
    }

    pub async fn create_temp(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardError> {
        let addr = &server.addr;
        let mut path = format!("/temp?hash={}&shard={shard}", hash.to_hex());
        if let Some(l) = length {
            path.push_str(&format!("&length={l}"));
        }
        let resp = self
            .send(addr, Retry::IfNotSent, || {
                self.req(reqwest::Method::POST, addr, &path)
                    .timeout(Duration::from_secs(30))
            })
            .await?;
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let created: Created = resp
            .json()
            .await
            .map_err(|_| ShardError::Malformed { addr: addr.clone() })?;
        Ok(created.id)
    }

    /// Streams pieces into upload `id` from raw offset `offset`; returns once the data server
    /// has written everything the stream carried.
    pub async fn write_temp(
        &self,
        addr: &str,
        id: &str,
        offset: u64,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<TempStatus, ShardError> {
        let resp = self
            .req(
                reqwest::Method::PATCH,
                addr,
                &format!("/temp/{id}?offset={offset}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(Self::transport(addr))?;
        Self::check(addr, resp)
            .await?
            .json()
            .await
            .map_err(|_| ShardError::Malformed {
                addr: addr.to_string(),
            })
    }

    pub async fn temp_status(&self, addr: &str, id: &str) -> Result<TempStatus, ShardError> {
        let path = format!("/temp/{id}");
        self.send(addr, Retry::Idempotent, || {
            self.req(reqwest::Method::GET, addr, &path)
                .timeout(Duration::from_secs(30))
        })
        .await?
        .json()
        .await
        .map_err(|_| ShardError::Malformed {
            addr: addr.to_string(),
        })
    }

    pub async fn commit(&self, addr: &str, id: &str, length: u64) -> Result<(), ShardError> {
        let path = format!("/temp/{id}?length={length}");
        self.send(addr, Retry::IfNotSent, || {
            self.req(reqwest::Method::PUT, addr, &path)
                .timeout(Duration::from_secs(120))
        })
        .await
        .map(drop)
    }

    pub async fn abort(&self, addr: &str, id: &str) -> Result<(), ShardError> {
        let path = format!("/temp/{id}");
        self.send(addr, Retry::IfNotSent, || {
            self.req(reqwest::Method::DELETE, addr, &path)
                .timeout(Duration::from_secs(30))
        })
        .await
        .map(drop)
    }

    /// Opens raw bytes `[start, end)` of a committed shard. The data server verifies the first
    /// piece before answering, so an error here means the shard is unusable from `start`.
    pub async fn read_shard(
        &self,
        addr: &str,
        hash: &ContentHash,
        shard: u8,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        self.read_range(
            addr,
            format!("/shards/{}/{shard}", hash.to_hex()),
            start,
            end,
        )
        .await
    }

    /// Raw bytes `[start, end)` of an upload in progress.
    pub async fn read_temp(
        &self,
        addr: &str,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        self.read_range(addr, format!("/temp/{id}/data"), start, end)
            .await
    }

    async fn read_range(
        &self,
        addr: &str,
        path: String,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        if start >= end {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let range = format!("bytes={start}-{}", end - 1);
        let resp = self
            .send(addr, Retry::IfNotSent, || {
                self.req(reqwest::Method::GET, addr, &path)
                    .header("range", &range)
                    .timeout(Duration::from_secs(3600))
            })
            .await?;
        let owned = addr.to_string();
        Ok(Box::pin(resp.bytes_stream().map(move |r| {
            r.map_err(|source| ShardError::Transport {
                addr: owned.clone(),
                source,
            })
        })))
    }

    /// Moves a shard to the data server's `garbage/`, unless it was written less than
    /// `min_age` ago (then a 412 error).
    pub async fn remove_shard(
        &self,
        addr: &str,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardError> {
        let mut path = format!("/shards/{}/{shard}", hash.to_hex());
        if let Some(age) = min_age {
            path.push_str(&format!("?min_age_secs={}", age.as_secs()));
        }
        self.send(addr, Retry::IfNotSent, || {
            self.req(reqwest::Method::DELETE, addr, &path)
                .timeout(Duration::from_secs(30))
        })
        .await
        .map(drop)
    }

    /// Has the data server read a whole shard and check every checksum. `Ok(length)`; a 404
    /// error means missing, or corrupt and now quarantined.
    pub async fn verify_shard(
        &self,
        addr: &str,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<u64, ShardError> {
        #[derive(Deserialize)]
        struct Verified {
            length: u64,
        }
        let path = format!("/shards/{}/{shard}/verify", hash.to_hex());
        let v: Verified = self
            .send(addr, Retry::Idempotent, || {
                self.req(reqwest::Method::POST, addr, &path)
                    .timeout(Duration::from_secs(3600))
            })
            .await?
            .json()
            .await
            .map_err(|_| ShardError::Malformed {
                addr: addr.to_string(),
            })?;
        Ok(v.length)
    }

    /// One page of the shards a data server holds, after `after`.
    pub async fn list_shards(
        &self,
        addr: &str,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        let mut path = format!("/shards?limit={limit}");
        if let Some((hash, shard)) = after {
            path.push_str(&format!("&after={}.{shard}", hash.to_hex()));
        }
        self.send(addr, Retry::Idempotent, || {
            self.req(reqwest::Method::GET, addr, &path)
                .timeout(Duration::from_secs(60))
        })
        .await?
        .json()
        .await
        .map_err(|_| ShardError::Malformed {
            addr: addr.to_string(),
        })
    }
}

/// A piece as the network delivered it: consecutive segments, not copied together.
#[derive(Debug, Clone, Default)]
pub struct Segments(pub Vec<Bytes>);

impl Segments {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One contiguous buffer (no copy when there is a single segment).
    pub fn contiguous(self) -> Bytes {
        if self.0.len() == 1 {
            return self.0.into_iter().next().unwrap_or_default();
        }
        let mut out = bytes::BytesMut::with_capacity(self.len());
        for s in &self.0 {
            out.extend_from_slice(s);
        }
        out.freeze()
    }
}

/// Reads exact-length pieces out of a shard byte stream.
pub struct PieceReader {
    body: ShardBody,
    pending: std::collections::VecDeque<Bytes>,
}

impl PieceReader {
    pub fn new(body: ShardBody) -> Self {
        Self {
            body,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// The next `n` bytes as received (no copy), or an error if the stream fails or ends
    /// early.
    pub async fn read_segments(&mut self, n: usize, addr: &str) -> Result<Segments, ShardError> {
        let mut out = Vec::new();
        let mut need = n;
        while need > 0 {
            let chunk = match self.pending.pop_front() {
                Some(c) => c,
                None => match self.body.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(ShardError::Malformed {
                            addr: addr.to_string(),
                        });
                    }
                },
            };
            if chunk.len() > need {
                let mut chunk = chunk;
                let rest = chunk.split_off(need);
                self.pending.push_front(rest);
                out.push(chunk);
                need = 0;
            } else {
                need -= chunk.len();
                if !chunk.is_empty() {
                    out.push(chunk);
                }
            }
        }
        Ok(Segments(out))
    }

    /// The next `n` bytes in one buffer.
    pub async fn read(&mut self, n: usize, addr: &str) -> Result<Bytes, ShardError> {
        Ok(self.read_segments(n, addr).await?.contiguous())
    }
}
