use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dos_protocol::{
    CheckReport, ContentHash, ListPage, LogPage, ObjectName, Redundancy, VersionRecord,
    WriteAttributes, format_rfc3339_ns, headers,
};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, HeaderValue, LOCATION, RANGE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio_util::io::ReaderStream;

use crate::meta::ObjectMeta;
use crate::ndjson::ndjson;
use crate::{ClientError, hash_file};

/// Objects at least this big are hashed on a blocking thread.
const BLOCKING_HASH_THRESHOLD: usize = 1 << 20;
/// Most bytes of an error body read to find its one-line message.
const MAX_ERROR_BODY: usize = 4096;
/// Read size when streaming a file to the server.
const FILE_STREAM_CHUNK: usize = 256 * 1024;

/// Makes rustls' ring provider the process's default (idempotent): reqwest needs one before it
/// builds any client (it is built with `rustls-no-provider`, so that only ring is compiled).
/// The project's clients call it themselves; code that builds a `reqwest::Client` of its own
/// calls it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    base_url: String,
    token: Option<String>,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    tls: Option<rustls::ClientConfig>,
}

impl ClientBuilder {
    /// For an `https://` API server: trust what this configuration trusts (a cluster's own
    /// CA). Without it, `https://` servers are checked against the system's roots.
    pub fn tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Sends `Authorization: Bearer TOKEN` on every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Bound on establishing a TCP connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on the time from sending a request until the response headers arrive, upload
    /// included. Off by default, because a large PUT is only answered once it is durable.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    pub fn build(self) -> Result<Client, ClientError> {
        let mut bases: Vec<Arc<str>> = Vec::new();
        for base in self.base_url.split(',') {
            let base = base.trim().trim_end_matches('/').to_owned();
            let url = reqwest::Url::parse(&base)
                .map_err(|e| ClientError::InvalidInput(format!("bad base URL {base:?}: {e}")))?;
            if url.scheme() != "http" && url.scheme() != "https" {
                return Err(ClientError::InvalidInput(format!(
                    "bad base URL {base:?}: only http:// and https:// are supported"
                )));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(ClientError::InvalidInput(format!(
                    "bad base URL {base:?}: no query or fragment allowed"
                )));
            }
            if !bases.iter().any(|b| **b == *base) {
                bases.push(Arc::from(base));
            }
        }
        let auth = match self.token {
            Some(token) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    ClientError::InvalidInput("token is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .no_proxy()
            .tcp_nodelay(true)
            // Under the API server's 30 s request head deadline, which also closes idle
            // connections: the client lets go of them first.
            .pool_idle_timeout(Duration::from_secs(20));
        if let Some(t) = self.response_timeout {
            http = http.read_timeout(t);
        }
        if let Some(tls) = self.tls {
            http = http.tls_backend_preconfigured(tls);
        }
        Ok(Client {
            http: http.build()?,
            servers: Arc::new(Servers::new(bases)),
            auth,
        })
    }
}

/// An async client of the REST interface of one API server, or of several (a base URL of
/// `URL,URL,…`): requests are spread over them in turn, and one that cannot reach its server
/// (or, for GET, HEAD and PUT, loses its connection) is sent to the next, which is then
/// skipped for [`SERVER_DOWN_FOR`]. Resumable uploads go on on any of them (their tokens are
/// signed with the cluster's shared secret). Cheap to clone; clones share one connection
/// pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Arc<Servers>,
    auth: Option<HeaderValue>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("bases", &self.servers.bases)
            .field("token", &self.auth.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// How long an API server that could not be reached is passed over.
pub const SERVER_DOWN_FOR: Duration = Duration::from_secs(5);

/// The API servers of a client, which one is next, and which are passed over until when.
struct Servers {
    bases: Vec<Arc<str>>,
    next: std::sync::atomic::AtomicUsize,
    down_until: std::sync::Mutex<Vec<Option<std::time::Instant>>>,
}

impl Servers {
    fn new(bases: Vec<Arc<str>>) -> Self {
        let n = bases.len();
        Self {
            bases,
            next: Default::default(),
            down_until: std::sync::Mutex::new(vec![None; n]),
        }
    }

    /// The next server in turn that is not passed over (any, when all are).
    fn pick(&self) -> &Arc<str> {
        let n = self.bases.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| down[i].is_none_or(|t| t <= now))
            .map_or(&self.bases[start % n], |i| &self.bases[i])
    }

    fn index_of(&self, url: &str) -> Option<usize> {
        self.bases.iter().position(|b| {
            url.strip_prefix(&**b)
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
    }

    fn is_down(&self, i: usize) -> bool {
        let now = std::time::Instant::now();
        self.down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(i)
            .is_some_and(|d| d.is_some_and(|t| t > now))
    }

    /// `url` on another server when its own is passed over (and another is not).
    fn moved(&self, url: &str) -> Option<String> {
        let i = self.index_of(url)?;
        if self.bases.len() < 2 || !self.is_down(i) {
            return None;
        }
        let to = self.pick();
        (**to != *self.bases[i]).then(|| format!("{to}{}", &url[self.bases[i].len()..]))
    }

    fn mark_down(&self, i: usize) {
        if let Some(d) = self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(i)
        {
            *d = Some(std::time::Instant::now() + SERVER_DOWN_FOR);
        }
    }
}

/// The answer to `POST /objects/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// The content was already stored: the version exists, no bytes need to be sent.
    Created(VersionRecord),
    /// Send the bytes to this resumable upload (`/temp/TOKEN`).
    Upload(String),
}

/// The answer to one `PUT /temp/TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadProgress {
    /// The upload goes on; `accepted` bytes are kept (a multiple of the block size).
    Partial { accepted: u64, size: Option<u64> },
    /// The last byte arrived, the SHA-256 matched and this version was made.
    Done(VersionRecord),
}

/// What a resumable upload sends.
#[derive(Debug, Clone)]
pub enum UploadSource {
    Bytes(Bytes),
    File(std::path::PathBuf),
}

/// The body of a GET, with the metadata of its headers.
///
/// For a whole-object answer the stream checks the size and the SHA-256 announced in the
/// headers and ends with an [`ClientError::Integrity`] error instead of `None` when they do
/// not match, so a consumer never mistakes wrong or truncated bytes for the object.
pub struct ObjectStream {
    pub meta: ObjectMeta,
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>,
}

impl fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStream")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Stream for ObjectStream {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl ObjectStream {
    /// The next piece of the body; `None` at its (verified) end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        self.inner.next().await
    }

    /// Reads the whole remaining body into memory.
    pub async fn collect_bytes(mut self) -> Result<Bytes, ClientError> {
        let mut out = Vec::with_capacity(usize::try_from(self.meta.body_len()).unwrap_or(0));
        while let Some(chunk) = self.inner.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }
}

/// A stream of version records (from NDJSON).
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<VersionRecord, ClientError>> + Send>>;

/// What a streamed upload received (the answer to [`Client::stream_upload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// Where to finish it.
    pub location: String,
    pub hash: ContentHash,
    pub size: u64,
}

#[derive(Deserialize)]
struct StreamedBody {
    hash: String,
    size: u64,
    upload: String,
}

#[derive(Deserialize)]
struct AcceptedBody {
    accepted: u64,
    #[serde(default)]
    size: Option<u64>,
}

fn parse_name(name: &str) -> Result<ObjectName, ClientError> {
    ObjectName::new(name).map_err(|source| ClientError::InvalidName {
        name: name.to_owned(),
        source,
    })
}

fn version_query(version: Option<u64>) -> String {
    version.map_or_else(String::new, |v| format!("?version={v}"))
}

/// Percent-encodes a query parameter value.
fn encode_query(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, QUERY).to_string()
}

fn with_attrs(mut rb: RequestBuilder, attrs: &WriteAttributes) -> RequestBuilder {
    rb = rb.header(headers::KIND, attrs.kind.as_str());
    if let Some(mode) = attrs.mode {
        rb = rb.header(headers::MODE, format!("{mode:o}"));
    }
    if let Some(ns) = attrs.mtime_ns {
        rb = rb.header(headers::MTIME, format_rfc3339_ns(ns));
    }
    if let Some(v) = attrs.supersedes {
        rb = rb.header(headers::SUPERSEDES, v.to_string());
    }
    let p = &attrs.posix;
    if let Some(uid) = p.uid {
        rb = rb.header(headers::UID, uid.to_string());
    }
    if let Some(gid) = p.gid {
        rb = rb.header(headers::GID, gid.to_string());
    }
    if p.rdev != 0 {
        rb = rb.header(headers::RDEV, p.rdev.to_string());
    }
    if let Some(ns) = p.atime_ns {
        rb = rb.header(headers::ATIME, format_rfc3339_ns(ns));
    }
    if let Some(link) = p.link {
        rb = rb.header(headers::LINK, link.to_string());
    }
    rb
}

async fn hash_bytes(data: &Bytes) -> ContentHash {
    if data.len() < BLOCKING_HASH_THRESHOLD {
        return ContentHash::of(data);
    }
    let copy = data.clone();
    match tokio::task::spawn_blocking(move || ContentHash::of(&copy)).await {
        Ok(h) => h,
        // The blocking pool is gone (runtime shutting down): hash here.
        Err(_) => ContentHash::of(data),
    }
}

fn header_str<'a>(resp: &'a Response, key: &str) -> Option<&'a str> {
    resp.headers().get(key).and_then(|v| v.to_str().ok())
}

/// Turns a non-success answer into a [`ClientError::Status`] with the server's first line.
async fn status_error(method: &Method, resp: Response) -> ClientError {
    let status = resp.status();
    let url = resp.url().to_string();
    let kind = header_str(&resp, headers::ERROR).map(str::to_owned);
    let accepted = header_str(&resp, headers::ACCEPTED).and_then(|v| v.trim().parse().ok());
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let message = match line {
        Some(l) if l.chars().count() > 300 => l.chars().take(300).collect::<String>() + "…",
        Some(l) => l.to_owned(),
        None => status.canonical_reason().unwrap_or("no message").to_owned(),
    };
    ClientError::Status {
        method: method.to_string(),
        url,
        status,
        message,
        kind,
        accepted,
    }
}

async fn read_json<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let url = resp.url().to_string();
    let body = resp.bytes().await?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::invalid_response(&url, format!("bad JSON body: {e}")))
}

impl Client {
    /// A client of the API server at `base_url` (e.g. `http://127.0.0.1:23333`) with the
    /// default settings.
    pub fn new(base_url: impl Into<String>) -> Result<Self, ClientError> {
        Self::builder(base_url).build()
    }

    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            connect_timeout: Duration::from_secs(10),
            response_timeout: None,
            tls: None,
        }
    }

    /// The (first) base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.servers.bases[0]
    }

    /// Every base URL, in the order given.
    pub fn base_urls(&self) -> Vec<String> {
        self.servers.bases.iter().map(|b| b.to_string()).collect()
    }

    /// The absolute URL of `path_and_query` (which starts with `/`) on the next API server.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.servers.pick(), path_and_query)
    }

    /// A raw request to `path_and_query` (which starts with `/`, already percent-encoded),
    /// carrying the bearer token: for anything the typed methods do not cover.
    pub fn request(&self, method: Method, path_and_query: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path_and_query));
        match &self.auth {
            Some(auth) => rb.header(AUTHORIZATION, auth.clone()),
            None => rb,
        }
    }

    /// `GET /health`: the number of live data servers the API server sees, within `timeout`.
    pub async fn health(&self, timeout: Duration) -> Result<u64, ClientError> {
        let rb = self.request(Method::GET, "/health").timeout(timeout);
        let value: serde_json::Value = read_json(self.send(Method::GET, rb).await?).await?;
        value["live_data_servers"].as_u64().ok_or_else(|| {
            ClientError::invalid_response(&self.url("/health"), "no live_data_servers count")
        })
    }

    /// `GET /status`: the API server's view of the cluster (data servers live and down,
    /// redundancy, maintenance jobs, request rates) as JSON, within `timeout`.
    pub async fn status(&self, timeout: Duration) -> Result<serde_json::Value, ClientError> {
        let rb = self.request(Method::GET, "/status").timeout(timeout);
        read_json(self.send(Method::GET, rb).await?).await
    }

    /// `/objects/NAME[?version=N]`, percent-encoded.
    pub fn object_path(name: &ObjectName, version: Option<u64>) -> String {
        format!("/objects/{}{}", name.to_path(), version_query(version))
    }

    /// Sends `rb` and returns the answer if it is a success, else the status error. With
    /// several API servers, a request that did not reach its server (or, for GET, HEAD and
    /// PUT, lost its connection before the answer) goes to the next one; a request with a
    /// streamed body goes once (its caller may send it again: the server is passed over from
    /// then on), and a request for a server that is passed over goes to another one.
    async fn send(&self, method: Method, rb: RequestBuilder) -> Result<Response, ClientError> {
        let again_when_lost = matches!(method, Method::GET | Method::HEAD | Method::PUT);
        self.send_to_any(method, rb, again_when_lost).await
    }

    /// [`send`](Self::send), where `again_when_lost` says whether the request may be sent
    /// again when its connection was lost before the answer (it is when sending it twice
    /// leaves what sending it once does, as for a POST of known content: at worst a second
    /// version of the same bytes, or an upload nobody continues, which expires).
    async fn send_to_any(
        &self,
        method: Method,
        rb: RequestBuilder,
        again_when_lost: bool,
    ) -> Result<Response, ClientError> {
        let mut req = rb.build()?;
        if let Some(moved) = self.servers.moved(req.url().as_str()) {
            *req.url_mut() = reqwest::Url::parse(&moved)
                .map_err(|e| ClientError::InvalidInput(format!("bad URL {moved:?}: {e}")))?;
        }
        let mut tries = self.servers.bases.len();
        let resp = loop {
            tries -= 1;
            let again = if tries > 0 { req.try_clone() } else { None };
            let at = self.servers.index_of(req.url().as_str());
            let e = match self.http.execute(req).await {
                Ok(resp) => break resp,
                Err(e) => e,
            };
            let safe = e.is_connect() || (!e.is_builder() && again_when_lost);
            match (again, at) {
                (Some(mut next), Some(i)) if safe => {
                    self.servers.mark_down(i);
                    let rest = next.url().as_str()[self.servers.bases[i].len()..].to_string();
                    let moved = format!("{}{rest}", self.servers.pick());
                    tracing::info!(from = %self.servers.bases[i], to = %moved, error = %e, "API server unreachable; trying another");
                    *next.url_mut() = reqwest::Url::parse(&moved).map_err(|e| {
                        ClientError::InvalidInput(format!("bad URL {moved:?}: {e}"))
                    })?;
                    req = next;
                }
                (None, Some(i)) if safe && self.servers.bases.len() > 1 => {
                    self.servers.mark_down(i);
                    return Err(e.into());
                }
                _ => return Err(e.into()),
            }
        };
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(status_error(&method, resp).await)
        }
    }

    /// The URL of an upload `location`: a path on this client's server, or an absolute URL
    /// of the same server. An absolute URL elsewhere is refused: the request would carry the
    /// bearer token to it.
    fn location_url(&self, location: &str) -> Result<String, ClientError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            match self.servers.index_of(location) {
                Some(_) => Ok(location.to_owned()),
                None => Err(ClientError::InvalidInput(format!(
                    "upload location {location:?} is not on {}; the token is not sent elsewhere",
                    self.servers.bases.join(",")
                ))),
            }
        } else if location.starts_with('/') {
            Ok(self.url(location))
        } else {
            Err(ClientError::InvalidInput(format!(
                "upload location {location:?} is neither absolute nor a path"
            )))
        }
    }

    // ----- writes -----

    /// `PUT /objects/NAME` with `bytes`: stores a new version and returns its record once it
    /// is durable.
    pub async fn put_bytes(
        &self,
        name: &str,
        bytes: impl Into<Bytes>,
        attrs: &WriteAttributes,
    ) -> Result<VersionRecord, ClientError> {
        let bytes = bytes.into();
        let hash = hash_bytes(&bytes).await;
        self.put_hashed(name, hash, bytes, attrs).await
    }

    /// `PUT /objects/NAME` with `bytes` whose SHA-256 is `hash`. The body is in memory, so
    /// with several API servers the request goes to the next one when its own is lost.
    pub async fn put_hashed(
        &self,
        name: &str,
        hash: ContentHash,
        bytes: Bytes,
        attrs: &WriteAttributes,
    ) -> Result<VersionRecord, ClientError> {
        let name = parse_name(name)?;
        let rb = self
            .request(Method::PUT, &Self::object_path(&name, None))
            .header(headers::DIGEST, hash.digest_header());
        let rb = with_attrs(rb, attrs).body(bytes);
        read_json(self.send(Method::PUT, rb).await?).await
    }

    /// `PUT /objects/NAME` with a streamed body whose SHA-256 is `hash`. With `size` the
    /// request carries a `Content-Length`; without it the body is sent chunked.
    pub async fn put_stream<S>(
        &self,
        name: &str,
        hash: ContentHash,
        size: Option<u64>,
        body: S,
        attrs: &WriteAttributes,
    ) -> Result<VersionRecord, ClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let name = parse_name(name)?;
        let mut rb = self
            .request(Method::PUT, &Self::object_path(&name, None))
            .header(headers::DIGEST, hash.digest_header());
        if let Some(size) = size {
            rb = rb.header(CONTENT_LENGTH, size);
        }
        let rb = with_attrs(rb, attrs).body(reqwest::Body::wrap_stream(body));
        read_json(self.send(Method::PUT, rb).await?).await
    }

    /// `PUT /objects/NAME` with the content of a local file: hashes the file first, then
    /// streams it (the file is never held in memory as a whole).
    pub async fn put_file(
        &self,
        name: &str,
        path: impl AsRef<Path>,
        attrs: &WriteAttributes,
    ) -> Result<VersionRecord, ClientError> {
        let path = path.as_ref();
        let (hash, size) = hash_file(path).await?;
        let io_err = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        // With several API servers, a PUT whose server is lost is sent again (the file is
        // read again) to the next one.
        let mut tries = self.servers.bases.len();
        loop {
            tries -= 1;
            let file = tokio::fs::File::open(path).await.map_err(io_err)?;
            let body = ReaderStream::with_capacity(file.take(size), FILE_STREAM_CHUNK);
            match self.put_stream(name, hash, Some(size), body, attrs).await {
                Err(e) if tries > 0 && e.went_unanswered() => {
                    tracing::info!(error = %e, "PUT lost its API server; sending it to another");
                }
                other => return other,
            }
        }
    }

    /// `DELETE /objects/NAME`: adds a delete marker and returns its record.
    pub async fn delete(&self, name: &str) -> Result<VersionRecord, ClientError> {
        let name = parse_name(name)?;
        let rb = self.request(Method::DELETE, &Self::object_path(&name, None));
        read_json(self.send(Method::DELETE, rb).await?).await
    }

    /// `POST /objects/NAME` with `Digest` and `Size`: makes a version at once when the
    /// content is stored already, else opens a resumable upload.
    pub async fn post(
        &self,
        name: &str,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
    ) -> Result<PostOutcome, ClientError> {
        let name = parse_name(name)?;
        let rb = self
            .request(Method::POST, &Self::object_path(&name, None))
            .header(headers::DIGEST, hash.digest_header())
            .header(headers::SIZE, size);
        let resp = self
            .send_to_any(Method::POST, with_attrs(rb, attrs), true)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(PostOutcome::Created(read_json(resp).await?)),
            StatusCode::CREATED => match header_str(&resp, LOCATION.as_str()) {
                Some(loc) if !loc.trim().is_empty() => Ok(PostOutcome::Upload(loc.trim().into())),
                _ => Err(ClientError::invalid_response(
                    resp.url().as_str(),
                    "201 without a Location header",
                )),
            },
            other => Err(ClientError::invalid_response(
                resp.url().as_str(),
                format!("unexpected status {other} for POST"),
            )),
        }
    }

    /// `POST /objects/NAME` with `x-dos-upload: stream`: opens an upload of content whose
    /// digest and size are not known yet. Returns its location.
    pub async fn open_upload(
        &self,
        name: &str,
        attrs: &WriteAttributes,
    ) -> Result<String, ClientError> {
        let name = parse_name(name)?;
        let rb = self
            .request(Method::POST, &Self::object_path(&name, None))
            .header(headers::UPLOAD, "stream");
        let resp = self
            .send_to_any(Method::POST, with_attrs(rb, attrs), true)
            .await?;
        match header_str(&resp, LOCATION.as_str()) {
            Some(loc) if resp.status() == StatusCode::CREATED && !loc.trim().is_empty() => {
                Ok(loc.trim().into())
            }
            _ => Err(ClientError::invalid_response(
                resp.url().as_str(),
                format!("{} without a Location header", resp.status()),
            )),
        }
    }

    /// `PUT /temp/TOKEN` of an open upload: all of its bytes, in one body of unknown length.
    /// The server answers what it received and where to finish it.
    pub async fn stream_upload<S>(&self, location: &str, body: S) -> Result<Streamed, ClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let url = self.location_url(location)?;
        let rb = self
            .authorized(self.http.put(&url))
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.send(Method::PUT, rb).await?;
        let body = resp.bytes().await?;
        let r: StreamedBody = serde_json::from_slice(&body)
            .map_err(|e| ClientError::invalid_response(&url, format!("bad JSON body: {e}")))?;
        let hash = ContentHash::from_hex(&r.hash)
            .map_err(|_| ClientError::invalid_response(&url, "bad hash in the answer"))?;
        Ok(Streamed {
            location: r.upload,
            hash,
            size: r.size,
        })
    }

    /// `POST /temp/TOKEN` of a received upload with the sender's digest: makes the version.
    pub async fn finish_upload(
        &self,
        location: &str,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> Result<VersionRecord, ClientError> {
        let url = self.location_url(location)?;
        let rb = self
            .authorized(self.http.post(&url))
            .header(headers::DIGEST, hash.digest_header());
        read_json(self.send(Method::POST, with_attrs(rb, attrs)).await?).await
    }

    /// `HEAD /temp/TOKEN`: the number of bytes the upload has accepted so far.
    pub async fn upload_status(&self, location: &str) -> Result<u64, ClientError> {
        let url = self.location_url(location)?;
        let rb = self.authorized(self.http.head(&url));
        let resp = self.send(Method::HEAD, rb).await?;
        header_str(&resp, CONTENT_LENGTH.as_str())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ClientError::invalid_response(&url, "missing or bad Content-Length"))
    }

    /// `PUT /temp/TOKEN` with `Range: bytes=OFFSET-` and the next bytes of the object.
    pub async fn upload_chunk(
        &self,
        location: &str,
        offset: u64,
        bytes: impl Into<Bytes>,
    ) -> Result<UploadProgress, ClientError> {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        self.upload_body(location, offset, len, reqwest::Body::from(bytes))
            .await
    }

    /// Like [`upload_chunk`](Self::upload_chunk), with `len` bytes streamed from `body`.
    pub async fn upload_stream<S>(
        &self,
        location: &str,
        offset: u64,
        len: u64,
        body: S,
    ) -> Result<UploadProgress, ClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.upload_body(location, offset, len, reqwest::Body::wrap_stream(body))
            .await
    }

    async fn upload_body(
        &self,
        location: &str,
        offset: u64,
        len: u64,
        body: reqwest::Body,
    ) -> Result<UploadProgress, ClientError> {
        let url = self.location_url(location)?;
        let rb = self
            .authorized(self.http.put(&url))
            .header(RANGE, format!("bytes={offset}-"))
            .header(CONTENT_LENGTH, len)
            .body(body);
        let resp = self.send(Method::PUT, rb).await?;
        let body = resp.bytes().await?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::invalid_response(&url, format!("bad JSON body: {e}")))?;
        if value.get("accepted").is_some() {
            let a: AcceptedBody = serde_json::from_value(value)
                .map_err(|e| ClientError::invalid_response(&url, format!("bad JSON body: {e}")))?;
            Ok(UploadProgress::Partial {
                accepted: a.accepted,
                size: a.size,
            })
        } else {
            serde_json::from_value(value)
                .map(UploadProgress::Done)
                .map_err(|e| ClientError::invalid_response(&url, format!("bad JSON body: {e}")))
        }
    }

    fn authorized(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.auth {
            Some(auth) => rb.header(AUTHORIZATION, auth.clone()),
            None => rb,
        }
    }

    // ----- reads -----

    /// `GET /objects/NAME[?version=N]`: the whole object, checked against its size and
    /// SHA-256.
    pub async fn get(&self, name: &str, version: Option<u64>) -> Result<Bytes, ClientError> {
        Ok(self.get_with_meta(name, version).await?.1)
    }

    /// Like [`Client::get`], with the metadata of the answer.
    pub async fn get_with_meta(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(ObjectMeta, Bytes), ClientError> {
        let stream = self.get_stream(name, version, None).await?;
        let meta = stream.meta.clone();
        Ok((meta, stream.collect_bytes().await?))
    }

    /// `GET` with `Range: <range>` (e.g. `bytes=10-19`, `bytes=10-`, `bytes=-10`). The
    /// metadata's `range` is set when the server answered 206; a 200 carries the whole object
    /// (then checked against its SHA-256).
    pub async fn get_range(
        &self,
        name: &str,
        version: Option<u64>,
        range: &str,
    ) -> Result<(ObjectMeta, Bytes), ClientError> {
        let stream = self.get_stream(name, version, Some(range)).await?;
        let meta = stream.meta.clone();
        Ok((meta, stream.collect_bytes().await?))
    }

    /// `GET` answering with the metadata and a stream of the body (optionally of a range).
    pub async fn get_stream(
        &self,
        name: &str,
        version: Option<u64>,
        range: Option<&str>,
    ) -> Result<ObjectStream, ClientError> {
        let name = parse_name(name)?;
        let mut rb = self.request(Method::GET, &Self::object_path(&name, version));
        if let Some(range) = range {
            rb = rb.header(RANGE, range);
        }
        let resp = self.send(Method::GET, rb).await?;
        let url = resp.url().to_string();
        if resp.headers().contains_key(CONTENT_ENCODING) {
            return Err(ClientError::invalid_response(
                &url,
                "content-encoded answer to a request that accepts no encoding",
            ));
        }
        let meta = ObjectMeta::from_headers(name, resp.status(), resp.headers(), &url, false)?;
        let body = resp.bytes_stream().map_err(ClientError::from);
        let inner: Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>> =
            if meta.range.is_none() {
                Box::pin(verified(body, meta.size, meta.hash, url))
            } else {
                Box::pin(length_checked(body, meta.body_len(), url))
            };
        Ok(ObjectStream { meta, inner })
    }

    /// `GET` with `Accept-Encoding: gzip`: the whole object, gunzipped when the server
    /// compressed it, checked against its SHA-256.
    pub async fn get_compressed(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(ObjectMeta, Bytes), ClientError> {
        let name = parse_name(name)?;
        let rb = self
            .request(Method::GET, &Self::object_path(&name, version))
            .header(ACCEPT_ENCODING, "gzip");
        let resp = self.send(Method::GET, rb).await?;
        let url = resp.url().to_string();
        let encoding = header_str(&resp, CONTENT_ENCODING.as_str()).map(|e| e.trim().to_owned());
        let gzipped = match encoding.as_deref() {
            None | Some("identity") => false,
            Some(e) if e.eq_ignore_ascii_case("gzip") => true,
            Some(e) => {
                return Err(ClientError::invalid_response(
                    &url,
                    format!("unexpected Content-Encoding {e:?}"),
                ));
            }
        };
        let mut meta =
            ObjectMeta::from_headers(name, resp.status(), resp.headers(), &url, gzipped)?;
        let raw = resp.bytes().await?;
        let bytes = if gzipped {
            let decoded = tokio::task::spawn_blocking(move || crate::gunzip(&raw))
                .await
                .map_err(|e| ClientError::invalid_response(&url, format!("gunzip: {e}")))??;
            meta.size = decoded.len() as u64;
            Bytes::from(decoded)
        } else {
            raw
        };
        if meta.size != bytes.len() as u64 {
            return Err(ClientError::Integrity {
                url,
                message: format!("{} bytes, expected {}", bytes.len(), meta.size),
            });
        }
        if hash_bytes(&bytes).await != meta.hash {
            return Err(ClientError::Integrity {
                url,
                message: "SHA-256 of the body differs from the ETag".into(),
            });
        }
        Ok((meta, bytes))
    }

    /// `HEAD /objects/NAME[?version=N]`.
    pub async fn head(&self, name: &str, version: Option<u64>) -> Result<ObjectMeta, ClientError> {
        let name = parse_name(name)?;
        let rb = self.request(Method::HEAD, &Self::object_path(&name, version));
        let resp = self.send(Method::HEAD, rb).await?;
        let url = resp.url().to_string();
        ObjectMeta::from_headers(name, resp.status(), resp.headers(), &url, false)
    }

    // ----- versions, listing, locate -----

    /// `GET /versions/NAME`: every version of `name`, ascending, delete markers included.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, ClientError> {
        self.versions_stream(name).await?.try_collect().await
    }

    /// `GET /versions/NAME` as a stream.
    pub async fn versions_stream(&self, name: &str) -> Result<RecordStream, ClientError> {
        let name = parse_name(name)?;
        self.ndjson_records(&format!("/versions/{}", name.to_path()))
            .await
    }

    /// `GET /versions/`: every version of every name, by name then version.
    pub async fn all_versions(&self) -> Result<Vec<VersionRecord>, ClientError> {
        self.all_versions_stream().await?.try_collect().await
    }

    /// `GET /versions/` as a stream, for listings too large to hold.
    pub async fn all_versions_stream(&self) -> Result<RecordStream, ClientError> {
        self.ndjson_records("/versions/").await
    }

    /// `POST /maintenance/JOB[?keep=N][&grace_secs=S]`: starts a maintenance job (`scrub`,
    /// `retention` or `orphans`) and streams its reports (JSON objects, one a second, the last
    /// with `"done": true`).
    pub async fn maintenance(
        &self,
        job: &str,
        keep: Option<u64>,
        grace: Option<Duration>,
    ) -> Result<
        std::pin::Pin<
            Box<dyn futures::Stream<Item = Result<serde_json::Value, ClientError>> + Send>,
        >,
        ClientError,
    > {
        let mut query = Vec::new();
        if let Some(k) = keep {
            query.push(format!("keep={k}"));
        }
        if let Some(g) = grace {
            query.push(format!("grace_secs={}", g.as_secs()));
        }
        let mut path = format!("/maintenance/{}", encode_query(job));
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let resp = self
            .send(Method::POST, self.request(Method::POST, &path))
            .await?;
        Ok(Box::pin(ndjson::<serde_json::Value>(resp)))
    }

    /// `GET /changes`: the changes any API server of the cluster makes from now on, as they
    /// happen. The stream ends when the connection does (follow again).
    pub async fn changes(&self) -> Result<dos_store::ChangeStream, ClientError> {
        use dos_protocol::{Change, ChangeEvent};
        let resp = self
            .send(Method::GET, self.request(Method::GET, "/changes"))
            .await?;
        let lines = ndjson::<serde_json::Value>(resp)
            .take_while(|line| std::future::ready(line.is_ok()))
            .filter_map(|line| async move {
                let v = line.ok()?;
                if v.get("missed").is_some() {
                    Some(ChangeEvent::Missed)
                } else if v.get("name").is_some() {
                    // A line not understood is a change missed.
                    Some(match serde_json::from_value::<Change>(v) {
                        Ok(c) => ChangeEvent::Changed(c),
                        Err(_) => ChangeEvent::Missed,
                    })
                } else {
                    None
                }
            });
        Ok(Box::pin(lines))
    }

    async fn ndjson_records(&self, path: &str) -> Result<RecordStream, ClientError> {
        let resp = self
            .send(Method::GET, self.request(Method::GET, path))
            .await?;
        Ok(Box::pin(ndjson::<VersionRecord>(resp)))
    }

    /// `GET /list?prefix=P&delimiter=D&cursor=C&limit=N`: one page of the latest live
    /// versions of the names under `prefix`, and the common prefixes up to the next
    /// `delimiter`.
    pub async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage, ClientError> {
        self.list_at(prefix, delimiter, cursor, limit, None).await
    }

    /// [`list`](Self::list) of the tree as it was at `at` (ns since the epoch; `None`: now):
    /// `GET /list?…&at=TIME`.
    pub async fn list_at(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
        at: Option<i64>,
    ) -> Result<ListPage, ClientError> {
        let mut query = vec![format!("prefix={}", encode_query(prefix))];
        if let Some(d) = delimiter {
            query.push(format!("delimiter={}", encode_query(d)));
        }
        if let Some(c) = cursor {
            query.push(format!("cursor={}", encode_query(c)));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(at) = at {
            query.push(format!("at={}", encode_query(&format_rfc3339_ns(at))));
        }
        let path = format!("/list?{}", query.join("&"));
        read_json(
            self.send(Method::GET, self.request(Method::GET, &path))
                .await?,
        )
        .await
    }

    /// `GET /log?prefix=P&since=T&cursor=C&limit=N`: one page of the changes under `prefix`,
    /// newest first.
    pub async fn log(
        &self,
        prefix: &str,
        since: Option<i64>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<LogPage, ClientError> {
        let mut query = vec![format!("prefix={}", encode_query(prefix))];
        if let Some(s) = since {
            query.push(format!("since={}", encode_query(&format_rfc3339_ns(s))));
        }
        if let Some(c) = cursor {
            query.push(format!("cursor={}", encode_query(c)));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let path = format!("/log?{}", query.join("&"));
        read_json(
            self.send(Method::GET, self.request(Method::GET, &path))
                .await?,
        )
        .await
    }

    /// Every page of a listing: (entries, common prefixes).
    pub async fn list_all(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<(Vec<VersionRecord>, Vec<String>), ClientError> {
        let mut entries = Vec::new();
        let mut prefixes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list(prefix, delimiter, cursor.as_deref(), None)
                .await?;
            entries.extend(page.entries);
            prefixes.extend(page.prefixes);
            match page.next_cursor {
                Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                    return Err(ClientError::invalid_response(
                        &self.url("/list"),
                        "listing cursor did not advance",
                    ));
                }
                Some(next) => cursor = Some(next),
                None => return Ok((entries, prefixes)),
            }
        }
    }

    /// `GET /locate/NAME[?version=N]`: shard index → data server address.
    /// `GET /contents/HASH/redundancy`: how many shards of a content answer healthy (a
    /// cheap check; damage found queues a repair).
    pub async fn redundancy(&self, hash: &ContentHash) -> Result<Redundancy, ClientError> {
        let path = format!("/contents/{}/redundancy", hash.to_hex());
        read_json(
            self.send(Method::GET, self.request(Method::GET, &path))
                .await?,
        )
        .await
    }

    /// `POST /contents/HASH/check`: verifies the content in full and repairs what is bad.
    /// Sent again to another API server when the answer was lost (checking twice is
    /// harmless).
    pub async fn check(&self, hash: &ContentHash) -> Result<CheckReport, ClientError> {
        let path = format!("/contents/{}/check", hash.to_hex());
        read_json(
            self.send_to_any(Method::POST, self.request(Method::POST, &path), true)
                .await?,
        )
        .await
    }

    pub async fn locate(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<BTreeMap<u8, String>, ClientError> {
        let name = parse_name(name)?;
        let path = format!("/locate/{}{}", name.to_path(), version_query(version));
        read_json(
            self.send(Method::GET, self.request(Method::GET, &path))
                .await?,
        )
        .await
    }
}

/// Passes `body` through, then fails unless it had exactly `size` bytes hashing to `hash`.
fn verified<S>(
    body: S,
    size: u64,
    hash: ContentHash,
    url: String,
) -> impl Stream<Item = Result<Bytes, ClientError>> + Send
where
    S: Stream<Item = Result<Bytes, ClientError>> + Send + 'static,
{
    struct State<S> {
        body: Pin<Box<S>>,
        hasher: Option<Sha256>,
        seen: u64,
    }
    let state = State {
        body: Box::pin(body),
        hasher: Some(Sha256::new()),
        seen: 0,
    };
    futures::stream::unfold(state, move |mut st| {
        let url = url.clone();
        async move {
            let hasher = st.hasher.as_mut()?;
            match st.body.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    st.seen += chunk.len() as u64;
                    if st.seen > size {
                        st.hasher = None;
                        let message = format!("more than the announced {size} bytes");
                        return Some((Err(ClientError::Integrity { url, message }), st));
                    }
                    Some((Ok(chunk), st))
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    Some((Err(e), st))
                }
                None => {
                    let hasher = st.hasher.take()?;
                    let message = if st.seen != size {
                        format!("{} bytes, expected {size}", st.seen)
                    } else if ContentHash(hasher.finalize().into()) != hash {
                        "SHA-256 of the body differs from the ETag".to_owned()
                    } else {
                        return None;
                    };
                    Some((Err(ClientError::Integrity { url, message }), st))
                }
            }
        }
    })
}

/// Passes `body` through, then fails unless it had exactly `len` bytes.
fn length_checked<S>(
    body: S,
    len: u64,
    url: String,
) -> impl Stream<Item = Result<Bytes, ClientError>> + Send
where
    S: Stream<Item = Result<Bytes, ClientError>> + Send + 'static,
{
    let state = (Box::pin(body), 0u64, false);
    futures::stream::unfold(state, move |(mut body, mut seen, done)| {
        let url = url.clone();
        async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) => {
                    seen += chunk.len() as u64;
                    Some((Ok(chunk), (body, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (body, seen, true))),
                None if seen == len => None,
                None => {
                    let message = format!("{seen} bytes, expected {len}");
                    Some((
                        Err(ClientError::Integrity { url, message }),
                        (body, seen, true),
                    ))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_stay_on_the_clients_server() {
        let c = Client::builder("http://127.0.0.1:23333")
            .token("t0k3n")
            .build()
            .unwrap();
        assert_eq!(
            c.location_url("/temp/abc").unwrap(),
            "http://127.0.0.1:23333/temp/abc"
        );
        assert!(c.location_url("http://127.0.0.1:23333/temp/abc").is_ok());
        for elsewhere in [
            "http://198.18.0.66/temp/abc",
            "http://127.0.0.1:23334/temp/abc",
            "http://127.0.0.1:23333.evil/temp",
            "https://127.0.0.1:23333/temp/abc",
            "temp/abc",
        ] {
            assert!(
                matches!(c.location_url(elsewhere), Err(ClientError::InvalidInput(_))),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn builder_validates_input() {
        assert!(Client::new("http://127.0.0.1:23333/").is_ok());
        assert_eq!(
            Client::new("http://127.0.0.1:23333/").unwrap().base_url(),
            "http://127.0.0.1:23333"
        );
        assert!(
            Client::new("https://example.com").is_ok(),
            "TLS is supported"
        );
        for bad in ["not a url", "http://h/?q=1", "https://h/#f", "ftp://h"] {
            assert!(
                matches!(Client::new(bad), Err(ClientError::InvalidInput(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Client::builder("http://h").token("bad\ntoken").build(),
            Err(ClientError::InvalidInput(_))
        ));
        let debug = format!(
            "{:?}",
            Client::builder("http://h").token("s3cret").build().unwrap()
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        let name = ObjectName::new("a b/ü?#%").unwrap();
        assert_eq!(
            Client::object_path(&name, Some(3)),
            "/objects/a%20b/%C3%BC%3F%23%25?version=3"
        );
        assert_eq!(encode_query("a/b c&d=é"), "a%2Fb%20c%26d%3D%C3%A9");
    }

    #[tokio::test]
    async fn names_are_checked_before_sending() {
        // Nothing listens on port 9: a request that were sent would be a transport error.
        let client = Client::new("http://127.0.0.1:9").unwrap();
        for bad in ["", "a//b", "../x", "a\0b"] {
            let err = client.get(bad, None).await.unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
    }
}
