//! The data server's HTTP interface (the table is in [`dos_protocol::shard`]): a thin axum
//! adapter over [`crate::shards`] and the [`ShardStore`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dos_protocol::shard::{ShardEntry, TempCreated, TempStatus, Verified};
use dos_protocol::{ContentHash, parse_range};
use dos_transport::request_id::RequestId;
use futures::StreamExt;
use serde::Deserialize;

use crate::shards::{self, BODY_IDLE_TIMEOUT, Source, WriteError};
use crate::store::{ShardStore, ShardStoreError};

/// Header of a 409 answer: the raw bytes the upload holds (`dos_transport::http` reads it).
const RECEIVED_HEADER: &str = "x-dos-received";

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<ShardStore>,
    pub id: String,
    /// When set, every request but `/health` must be signed with it (see
    /// `dos_protocol::signature`).
    pub secret: Option<Arc<[u8]>>,
    /// Nonces of the signatures accepted lately: a replayed request is refused.
    pub nonces: Arc<dos_protocol::signature::NonceCache>,
    /// This process's metrics, served at `/metrics`.
    pub metrics: Option<dos_worker::http::Metrics>,
}

/// Refuses requests not signed with the cluster secret.
async fn check_signature(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // `/health` and `/metrics` say nothing of the data and are what monitors read unsigned.
    if let Some(secret) = &s.secret
        && !matches!(req.uri().path(), "/health" | "/metrics")
    {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let signed = dos_protocol::signature::Request {
            method: req.method().as_str(),
            path_and_query: &path,
            server_id: &s.id,
            range: header(header::RANGE.as_str()),
            body_sha256: header(dos_protocol::headers::BODY_SHA256),
        };
        let now = dos_protocol::signature::unix_secs();
        let fresh = dos_protocol::signature::verify(
            secret,
            &signed,
            header(dos_protocol::headers::SIGNATURE),
            now,
        )
        .is_some_and(|nonce| s.nonces.first_use(nonce, now));
        if !fresh {
            return (
                StatusCode::FORBIDDEN,
                "request is not signed with this cluster's secret\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

pub fn router(state: AppState) -> Router {
    let families = crate::metrics::requests(&state.id);
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/temp", post(create_temp))
        .route(
            "/temp/{id}",
            get(temp_status)
                .patch(write_temp)
                .put(commit_temp)
                .delete(abort_temp),
        )
        .route("/temp/{id}/data", get(read_temp))
        .route("/shards", get(list_shards))
        .route(
            "/shards/{hash}/{shard}",
            get(read_shard).put(put_shard).delete(remove_shard),
        )
        .route("/shards/{hash}/{shard}/verify", post(verify_shard))
        .route("/draining/{state}", axum::routing::put(set_draining))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_signature,
        ))
        .layer(axum::middleware::from_fn(in_request_span))
        .with_state(state);
    dos_worker::http::track_requests(app, families)
}

/// `/metrics`: this process's metrics in the Prometheus text format, gauges read now.
async fn metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(m) => {
            crate::server::refresh_metrics(s.store.clone(), s.id.clone()).await;
            m.response()
        }
        None => (StatusCode::NOT_FOUND, "this server has no metrics\n").into_response(),
    }
}

/// Logs everything a request causes under the id of the client request it serves (the API
/// server sends it as `x-request-id`; see `dos_transport::request_id`).
async fn in_request_span(req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let given = req.headers().get(RequestId::HEADER_NAME);
    let id = RequestId::from_header(given.and_then(|v| v.to_str().ok()));
    let span = id.span(req.method().as_str(), req.uri().path());
    async move {
        let resp = next.run(req).await;
        let status = resp.status();
        if status.is_server_error() {
            tracing::warn!(%status, "request failed");
        } else if status.is_client_error() {
            tracing::info!(%status, "request refused");
        } else {
            tracing::debug!(status = status.as_u16(), "request served");
        }
        resp
    }
    .instrument(span)
    .await
}

/// Errors of this interface, mapped to a status once.
#[derive(Debug, thiserror::Error)]
pub enum DataServerError {
    #[error(transparent)]
    Store(#[from] ShardStoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("bad hash")]
    BadHash,
    #[error("bad cursor {0:?}")]
    BadCursor(String),
    #[error("the drain mark is `true` or `false`, not {0:?}")]
    BadDraining(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
}

fn store_status(e: &ShardStoreError) -> StatusCode {
    match e {
        ShardStoreError::NotFound(_) => StatusCode::NOT_FOUND,
        ShardStoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ShardStoreError::OffsetMismatch { .. } => StatusCode::CONFLICT,
        ShardStoreError::Corrupt(_) => StatusCode::NOT_FOUND,
        ShardStoreError::TooNew(_) => StatusCode::PRECONDITION_FAILED,
        ShardStoreError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        ShardStoreError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        ShardStoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for DataServerError {
    fn into_response(self) -> Response {
        let status = match &self {
            DataServerError::Store(e) | DataServerError::Write(WriteError::Store(e)) => {
                store_status(e)
            }
            DataServerError::Write(WriteError::Body(_) | WriteError::TooLong) => {
                StatusCode::BAD_REQUEST
            }
            DataServerError::Write(WriteError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            DataServerError::Write(WriteError::Task(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            DataServerError::BadHash
            | DataServerError::BadCursor(_)
            | DataServerError::BadDraining(_) => StatusCode::BAD_REQUEST,
            DataServerError::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "data server request failed");
        }
        let received = match &self {
            DataServerError::Store(ShardStoreError::OffsetMismatch { length, .. })
            | DataServerError::Write(WriteError::Store(ShardStoreError::OffsetMismatch {
                length,
                ..
            })) => Some(*length),
            _ => None,
        };
        let mut resp = (status, format!("{self}\n")).into_response();
        if let Some(r) = received {
            resp.headers_mut()
                .insert(RECEIVED_HEADER, HeaderValue::from(r));
        }
        resp
    }
}

type Result<T> = std::result::Result<T, DataServerError>;

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "id": s.id }))
}

fn parse_hash(hex: &str) -> Result<ContentHash> {
    ContentHash::from_hex(hex).map_err(|_| DataServerError::BadHash)
}

#[derive(Deserialize)]
struct CreateTemp {
    hash: String,
    shard: u8,
    length: Option<u64>,
}

async fn create_temp(
    State(s): State<AppState>,
    Query(q): Query<CreateTemp>,
) -> Result<Json<TempCreated>> {
    let hash = parse_hash(&q.hash)?;
    let store = s.store.clone();
    let id = shards::blocking(move || store.create_temp(&hash, q.shard, q.length)).await?;
    Ok(Json(TempCreated { id }))
}

async fn temp_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TempStatus>> {
    let store = s.store.clone();
    Ok(Json(
        shards::blocking(move || store.temp_status(&id)).await?,
    ))
}

#[derive(Deserialize)]
struct Offset {
    offset: u64,
}

async fn write_temp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<Offset>,
    body: Body,
) -> Result<Json<TempStatus>> {
    // An API server that stops sending (hung, or its host gone) is cut off; what it sent
    // stays in the upload, which it can resume or which expires.
    let status = shards::write_stream(
        &s.store,
        &id,
        q.offset,
        body.into_data_stream(),
        BODY_IDLE_TIMEOUT,
    )
    .await?;
    Ok(Json(status))
}

#[derive(Deserialize)]
struct Commit {
    length: u64,
    /// The content the shard belongs to (required for an upload of unknown content).
    hash: Option<String>,
}

async fn commit_temp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<Commit>,
) -> Result<StatusCode> {
    let hash = q.hash.as_deref().map(parse_hash).transpose()?;
    let store = s.store.clone();
    shards::blocking(move || store.commit(&id, q.length, hash)).await?;
    Ok(StatusCode::OK)
}

async fn abort_temp(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    let store = s.store.clone();
    shards::blocking(move || store.abort(&id)).await?;
    Ok(StatusCode::OK)
}

/// `PUT /shards/H/S`: a whole small shard in one request, durable when answered.
async fn put_shard(
    State(s): State<AppState>,
    Path((hash, shard)): Path<(String, u8)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let hash = parse_hash(&hash)?;
    let limit = dos_protocol::shard::MAX_WHOLE_SHARD;
    let raw = tokio::time::timeout(BODY_IDLE_TIMEOUT, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| WriteError::Stalled(BODY_IDLE_TIMEOUT))?
        .map_err(|e| {
            WriteError::Store(ShardStoreError::BadRequest(format!(
                "a whole shard is at most {limit} bytes: {e}"
            )))
        })?;
    // The body the signature names (when it names one) is the body that arrived.
    if let Some(want) = headers
        .get(dos_protocol::headers::BODY_SHA256)
        .and_then(|v| v.to_str().ok())
        && hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw)) != want.trim()
    {
        return Err(DataServerError::Store(ShardStoreError::BadRequest(
            "the body is not the one the request was signed for".into(),
        )));
    }
    let store = s.store.clone();
    shards::blocking(move || store.put_whole(&hash, shard, &raw)).await?;
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize)]
struct RemoveQuery {
    /// Keep the shard if it was written less than this many seconds ago.
    min_age_secs: Option<u64>,
}

async fn remove_shard(
    State(s): State<AppState>,
    Path((hash, shard)): Path<(String, u8)>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode> {
    let hash = parse_hash(&hash)?;
    let store = s.store.clone();
    let min_age = q.min_age_secs.map(std::time::Duration::from_secs);
    shards::blocking(move || store.remove_shard(&hash, shard, min_age)).await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct ListShardsQuery {
    /// `<hex hash>.<shard>` of the last entry of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /shards?after=&limit=`: committed shards in (hash, shard) order with their ages.
async fn list_shards(
    State(s): State<AppState>,
    Query(q): Query<ListShardsQuery>,
) -> Result<Json<Vec<ShardEntry>>> {
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(
            dos_protocol::shard::paths::parse_after(a)
                .ok_or_else(|| DataServerError::BadCursor(a.to_string()))?,
        ),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let store = s.store.clone();
    Ok(Json(
        shards::blocking(move || store.list_shards(after, limit)).await?,
    ))
}

/// `PUT /draining/true` or `/draining/false`: whether this server is being drained, which
/// its heartbeats tell every API server (they give it no new shards while six others are
/// live). In the path, so that the request's signature covers it.
async fn set_draining(State(s): State<AppState>, Path(state): Path<String>) -> Result<StatusCode> {
    let draining = match state.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(DataServerError::BadDraining(
                other.chars().take(40).collect(),
            ));
        }
    };
    s.store.set_draining(draining);
    tracing::info!(draining, "drain mark set");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /shards/{hash}/{shard}/verify`: reads the whole shard and checks every checksum; a
/// corrupt shard is quarantined and answered like a missing one (404).
async fn verify_shard(
    State(s): State<AppState>,
    Path((hash, shard)): Path<(String, u8)>,
) -> Result<Json<Verified>> {
    let hash = parse_hash(&hash)?;
    let store = s.store.clone();
    let length = shards::blocking(move || store.verify_shard(&hash, shard)).await?;
    Ok(Json(Verified { length }))
}

async fn read_shard(
    State(s): State<AppState>,
    Path((hash, shard)): Path<(String, u8)>,
    headers: HeaderMap,
) -> Result<Response> {
    let hash = parse_hash(&hash)?;
    stream_pieces(&s.store, Source::Shard { hash, shard }, &headers).await
}

async fn read_temp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    stream_pieces(&s.store, Source::Temp { id }, &headers).await
}

/// Streams raw bytes `[Range]` of a shard or upload (see [`shards::Opened::stream`]: the
/// first piece is verified before the status goes out).
async fn stream_pieces(
    store: &Arc<ShardStore>,
    source: Source,
    headers: &HeaderMap,
) -> Result<Response> {
    let opened = shards::open(store, source).await?;
    let total = opened.total;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        total,
    )
    .map_err(|_| DataServerError::RangeNotSatisfiable)?;
    let (start, end) = match range {
        Some(r) => (r.start, r.end + 1),
        None => (0, total),
    };
    let read = opened.stream(start, end).await?;
    let body = read
        .body
        .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
    let mut resp = Response::new(Body::from_stream(body));
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(read.end - read.start),
    );
    if range.is_some()
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, total))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
