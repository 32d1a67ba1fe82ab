//! The data server's HTTP interface: a thin axum adapter over [`ShardStore`].
//!
//! | Request | Effect |
//! |---|---|
//! | `POST /temp?hash=HEX&shard=I[&length=N]` | starts an upload (length may be unknown); `{"id": …}` |
//! | `GET /temp/ID` | `{"received": …, "length": …}` |
//! | `PATCH /temp/ID?offset=N` (body) | writes whole pieces from raw offset N; a trailing partial piece that does not end the shard is dropped; answers the new status |
//! | `GET /temp/ID/data` (Range) | verified raw bytes received so far |
//! | `PUT /temp/ID?length=N` | commits durably once exactly N raw bytes were received |
//! | `DELETE /temp/ID` | abandons |
//! | `GET /shards/HEX/I` (Range) | verified raw bytes of a committed shard |
//! | `DELETE /shards/HEX/I[?min_age_secs=S]` | moves the shard to `garbage/` (412 when written less than S seconds ago) |
//! | `POST /shards/HEX/I/verify` | reads the whole shard checking every checksum: `{"length": …}`, or 404 (missing, or corrupt and now quarantined) |
//! | `GET /shards?after=HEX.I&limit=N` | committed shards in order: `[{"hash", "shard", "age_secs"}]` |
//! | `GET /health` | `{"id": …}` |

use std::io;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use dos_protocol::{ContentHash, PIECE_SIZE, parse_range};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::store::format::FormatError;
use crate::store::{ShardEntry, ShardStore, ShardStoreError, TempStatus};

/// A shard upload body that sends nothing for this long is cut off (408).
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Header carrying a shard's total raw length on shard reads.
pub const SHARD_LENGTH: &str = "x-dos-shard-length";

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<ShardStore>,
    pub id: String,
    /// When set, every request but `/health` must be signed with it (see
    /// `dos_protocol::signature`).
    pub secret: Option<Arc<[u8]>>,
}

/// Refuses requests not signed with the cluster secret.
async fn check_signature(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(secret) = &s.secret
        && req.uri().path() != "/health"
    {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let sig = req
            .headers()
            .get(dos_protocol::headers::SIGNATURE)
            .and_then(|v| v.to_str().ok());
        let now = dos_protocol::signature::unix_secs();
        if !dos_protocol::signature::verify(secret, req.method().as_str(), &path, sig, now) {
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
    Router::new()
        .route("/health", get(health))
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
            get(read_shard).delete(remove_shard),
        )
        .route("/shards/{hash}/{shard}/verify", post(verify_shard))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_signature,
        ))
        .with_state(state)
}

/// Errors of this interface, mapped to a status once.
#[derive(Debug, thiserror::Error)]
pub enum DataServerError {
    #[error(transparent)]
    Store(#[from] ShardStoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    #[error("the request body stalled: nothing arrived for {} s", BODY_IDLE_TIMEOUT.as_secs())]
    BodyStalled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for DataServerError {
    fn into_response(self) -> Response {
        let status = match &self {
            DataServerError::Store(e) => match e {
                ShardStoreError::NotFound(_) => StatusCode::NOT_FOUND,
                ShardStoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
                ShardStoreError::OffsetMismatch { .. } => StatusCode::CONFLICT,
                ShardStoreError::Corrupt(_) => StatusCode::NOT_FOUND,
                ShardStoreError::TooNew(_) => StatusCode::PRECONDITION_FAILED,
                ShardStoreError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                    StatusCode::INSUFFICIENT_STORAGE
                }
                ShardStoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            DataServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DataServerError::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            DataServerError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            DataServerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "data server request failed");
        }
        (status, format!("{self}\n")).into_response()
    }
}

type Result<T> = std::result::Result<T, DataServerError>;

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, ShardStoreError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DataServerError::Internal(format!("blocking task failed: {e}")))?
        .map_err(DataServerError::from)
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "id": s.id }))
}

fn parse_hash(hex: &str) -> Result<ContentHash> {
    ContentHash::from_hex(hex).map_err(|_| DataServerError::BadRequest("bad hash".into()))
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
) -> Result<Json<serde_json::Value>> {
    let hash = parse_hash(&q.hash)?;
    let store = s.store.clone();
    let id = blocking(move || store.create_temp(&hash, q.shard, q.length)).await?;
    Ok(Json(serde_json::json!({ "id": id })))
}

async fn temp_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TempStatus>> {
    let store = s.store.clone();
    Ok(Json(blocking(move || store.temp_status(&id)).await?))
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
    let store = s.store.clone();
    let id2 = id.clone();
    let mut status = blocking(move || store.temp_status(&id2)).await?;
    if q.offset > status.received || !q.offset.is_multiple_of(PIECE_SIZE as u64) {
        return Err(ShardStoreError::OffsetMismatch {
            offset: q.offset,
            length: status.received,
        }
        .into());
    }
    let mut offset = q.offset;
    let mut buf = BytesMut::with_capacity(PIECE_SIZE);
    let mut stream = body.into_data_stream();
    loop {
        // An API server that stops sending (hung, or its host gone) is cut off; what it sent
        // stays in the upload, which it can resume or which expires.
        let chunk = tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next())
            .await
            .map_err(|_| DataServerError::BodyStalled)?;
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk =
                chunk.map_err(|e| DataServerError::BadRequest(format!("reading body: {e}")))?;
            buf.extend_from_slice(&chunk);
        }
        // Write every whole piece buffered, and the short last piece of the shard.
        loop {
            let want = match status.length {
                Some(l) => l.saturating_sub(offset).min(PIECE_SIZE as u64) as usize,
                None if done && !buf.is_empty() => buf.len().min(PIECE_SIZE),
                None => PIECE_SIZE,
            };
            if want == 0 || buf.len() < want {
                break;
            }
            let piece = buf.split_to(want).freeze();
            let (store, id) = (s.store.clone(), id.clone());
            status = blocking(move || store.write_piece(&id, offset, &piece)).await?;
            offset = status.received;
        }
        if status.length == Some(offset) && !buf.is_empty() {
            return Err(DataServerError::BadRequest(
                "body goes past the declared length".into(),
            ));
        }
        if done {
            break;
        }
    }
    Ok(Json(status))
}

#[derive(Deserialize)]
struct Length {
    length: u64,
}

async fn commit_temp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<Length>,
) -> Result<StatusCode> {
    let store = s.store.clone();
    blocking(move || store.commit(&id, q.length)).await?;
    Ok(StatusCode::OK)
}

async fn abort_temp(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    let store = s.store.clone();
    blocking(move || store.abort(&id)).await?;
    Ok(StatusCode::OK)
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
    blocking(move || store.remove_shard(&hash, shard, min_age)).await?;
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
        Some(a) => {
            let (hash, shard) = a
                .rsplit_once('.')
                .ok_or_else(|| DataServerError::BadRequest(format!("bad cursor {a:?}")))?;
            let shard = shard
                .parse()
                .map_err(|_| DataServerError::BadRequest(format!("bad cursor {a:?}")))?;
            Some((parse_hash(hash)?, shard))
        }
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let store = s.store.clone();
    Ok(Json(
        blocking(move || store.list_shards(after, limit)).await?,
    ))
}

/// `POST /shards/{hash}/{shard}/verify`: reads the whole shard and checks every checksum; a
/// corrupt shard is quarantined and answered like a missing one (404).
async fn verify_shard(
    State(s): State<AppState>,
    Path((hash, shard)): Path<(String, u8)>,
) -> Result<Json<serde_json::Value>> {
    let hash = parse_hash(&hash)?;
    let store = s.store.clone();
    let length = blocking(move || store.verify_shard(&hash, shard)).await?;
    Ok(Json(serde_json::json!({ "length": length })))
}

async fn read_shard(
    State(s): State<AppState>,
    Path((hash, shard)): Path<(String, u8)>,
    headers: HeaderMap,
) -> Result<Response> {
    let hash = parse_hash(&hash)?;
    let store = s.store.clone();
    let mut reader = blocking(move || store.open_shard(&hash, shard)).await?;
    let total = reader.len();
    let store = s.store.clone();
    stream_pieces(total, &headers, move |k| {
        reader.piece(k).inspect_err(|e| {
            if let FormatError::Corrupt(m) = e {
                store.quarantine(&hash, shard, m);
            }
        })
    })
    .await
}

async fn read_temp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let store = s.store.clone();
    let id2 = id.clone();
    let status = blocking(move || store.temp_status(&id2)).await?;
    let store = s.store.clone();
    stream_pieces(status.received, &headers, move |k| {
        store.read_temp_piece(&id, k).map_err(|e| match e {
            ShardStoreError::Io(e) => FormatError::Io(e),
            other => FormatError::Corrupt(other.to_string()),
        })
    })
    .await
}

/// Streams raw bytes `[Range]` of a `total`-byte shard, reading verified pieces with
/// `piece(k)` on a blocking thread. The first piece is read and verified before the status is
/// sent, so a shard that is bad from the start fails with an error status; a piece that fails
/// later aborts the body (the reader sees a truncated transfer, never wrong bytes).
async fn stream_pieces(
    total: u64,
    headers: &HeaderMap,
    mut piece: impl FnMut(usize) -> std::result::Result<Vec<u8>, FormatError> + Send + 'static,
) -> Result<Response> {
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        total,
    )
    .map_err(|_| DataServerError::RangeNotSatisfiable)?;
    let (start, end) = match range {
        Some(r) => (r.start, r.end + 1),
        None => (0, total),
    };
    let (first_tx, first_rx) = oneshot::channel::<std::result::Result<(), FormatError>>();
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut first_tx = Some(first_tx);
        let mut pos = start;
        while pos < end {
            let k = (pos / PIECE_SIZE as u64) as usize;
            let piece_start = k as u64 * PIECE_SIZE as u64;
            match piece(k) {
                Ok(bytes) => {
                    let from = (pos - piece_start) as usize;
                    let to = ((end - piece_start) as usize).min(bytes.len());
                    if from >= to {
                        let e = FormatError::Corrupt(format!("piece {k} is short"));
                        if let Some(f) = first_tx.take() {
                            let _ = f.send(Err(e));
                        }
                        return;
                    }
                    let mut bytes = Bytes::from(bytes);
                    bytes = bytes.slice(from..to);
                    pos += bytes.len() as u64;
                    if let Some(f) = first_tx.take() {
                        // The receiver may be gone if the client left; nothing to do then.
                        let _ = f.send(Ok(()));
                    }
                    if tx.blocking_send(Ok(bytes)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, piece = k, "shard read failed");
                    match first_tx.take() {
                        Some(f) => {
                            let _ = f.send(Err(e));
                        }
                        None => {
                            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                        }
                    }
                    return;
                }
            }
        }
        if let Some(f) = first_tx.take() {
            let _ = f.send(Ok(()));
        }
    });
    match first_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(FormatError::Corrupt(m))) => return Err(ShardStoreError::Corrupt(m).into()),
        Ok(Err(FormatError::Io(e))) => return Err(ShardStoreError::Io(e).into()),
        Err(_) => return Err(DataServerError::Internal("shard reader stopped".into())),
    }
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(SHARD_LENGTH, HeaderValue::from(total));
    if range.is_some()
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, total))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
