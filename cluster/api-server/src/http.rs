//! The REST interface: a thin axum adapter. Handlers parse the request, call `objects`,
//! `resumable`, `stream` or `maintenance`, and format the answer; an [`ApiError`] becomes its
//! status ([`ApiError::status`]) and one-line public message here, and only here.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use bytes::Bytes;
use dos_metadata::{ListQuery, VersionsFrom};
use dos_protocol::{
    ContentHash, EntryKind, ObjectName, PosixAttrs, VersionRecord, WriteAttributes,
    format_rfc3339_ns, headers as h, parse_digest_header, parse_range, parse_rfc3339_ns,
};
use dos_transport::request_id::RequestId;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::maintenance::Maintenance;
use crate::{objects, placement, resumable, stream};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub maintenance: Arc<Maintenance>,
    /// Who `/status` saw, and its last request counts.
    pub seen: Arc<crate::status::Seen>,
}

impl FromRef<AppState> for Arc<Core> {
    fn from_ref(s: &AppState) -> Self {
        s.core.clone()
    }
}

impl FromRef<AppState> for Arc<Maintenance> {
    fn from_ref(s: &AppState) -> Self {
        s.maintenance.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let core = state.core.clone();
    let limit = Arc::new(Semaphore::new(core.config.max_in_flight));
    let app = Router::new()
        .route(
            "/objects/{*name}",
            get(get_object)
                .head(get_object)
                .put(put_object)
                .delete(delete_object)
                .post(post_object),
        )
        .route("/objects/", any(empty_name))
        .route(
            "/temp/{token}",
            put(put_temp).head(head_temp).post(finish_temp),
        )
        .route("/versions/", get(versions))
        .route("/versions/{*name}", get(versions))
        .route("/locate/{*name}", get(locate))
        .route("/contents/{hash}/redundancy", get(content_redundancy))
        .route("/contents/{hash}/check", axum::routing::post(content_check))
        .route("/list", get(list))
        .route("/log", get(log))
        .route("/changes", get(changes))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/ui", get(ui))
        .route("/maintenance/{job}", axum::routing::post(run_maintenance))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(core, authorize))
        .layer(middleware::from_fn(check_request_head))
        .layer(middleware::from_fn_with_state(limit, limit_in_flight))
        .layer(middleware::from_fn(with_request_id))
        .with_state(state);
    dos_worker::http::track_requests(app, crate::metrics::requests())
}

/// `/metrics`: this process's metrics in the Prometheus text format (behind the token when
/// one is set, like everything but `/health`).
async fn metrics(State(core): State<Arc<Core>>) -> Response {
    match &core.config.metrics {
        Some(m) => {
            crate::metrics::refresh(&core);
            m.response()
        }
        None => ApiError::NotFound("this server has no metrics".into()).into_response(),
    }
}

/// `/status`: live and down data servers, redundancy, maintenance jobs and request rates as
/// JSON (see `status`; behind the token when one is set).
async fn status(State(state): State<AppState>) -> Response {
    axum::Json(state.seen.status(&state.core, &state.maintenance)).into_response()
}

/// The status page (no data in it: its script fetches `/status`, with the token it is given
/// in the URL fragment or asks for), served without the token.
async fn ui() -> Response {
    let mut resp = include_str!("status.html").into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Gives every request an id (the client's `x-request-id` when it has the form of one): a
/// tracing span carrying it covers everything the request does (the data servers it calls
/// get it too), and the response names it, so a failure a client reports can be found in
/// the logs.
async fn with_request_id(req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let given = req.headers().get(RequestId::HEADER_NAME);
    let id = RequestId::from_header(given.and_then(|v| v.to_str().ok()));
    let span = id.span(req.method().as_str(), req.uri().path());
    let served = async move {
        let resp = next.run(req).await;
        tracing::debug!(status = resp.status().as_u16(), "request served");
        resp
    };
    let mut resp = id.clone().scope(served.instrument(span)).await;
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(RequestId::HEADER_NAME, v);
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let mut resp = (status, format!("{}\n", self.public_message())).into_response();
        resp.headers_mut()
            .insert(h::ERROR, HeaderValue::from_static(self.kind()));
        if let ApiError::OffsetMismatch { accepted, .. } = &self {
            resp.headers_mut()
                .insert(h::ACCEPTED, HeaderValue::from(*accepted));
        }
        if let Some(secs) = self.retry_after_secs() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::RangeNotSatisfiable { size } = self
            && let Ok(v) = format!("bytes */{size}").parse()
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Reads and discards what is left of a request body (at most 64 MiB, for at most 10 s), so
/// that a request refused before its body was read gets its answer instead of a connection
/// reset while the client is still sending.
async fn drain<S, E>(body: &mut S)
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
{
    const LIMIT: usize = 64 << 20;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len();
            if seen > LIMIT {
                break;
            }
        }
    })
    .await;
}

async fn empty_name() -> ApiError {
    ApiError::BadRequest("object name is empty".into())
}

/// With a configured token, every request but `/health` and `/ui` (the page without data) needs `Authorization: Bearer TOKEN`
/// (the data token or the admin token). Destructive maintenance (retention, orphan
/// collection) needs the admin token; with a data token and no admin token it is refused.
async fn authorize(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // Jobs that delete data or move every shard need the admin token.
    let destructive = path == "/maintenance/retention"
        || path == "/maintenance/orphans"
        || path == "/maintenance/rebalance"
        || path.starts_with("/maintenance/drain");
    let (token, admin) = (&core.config.token, &core.config.admin_token);
    if (token.is_some() || admin.is_some()) && path != "/health" && path != "/ui" {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let is = |t: &Option<String>| {
            t.as_ref()
                .zip(given)
                .is_some_and(|(t, g)| constant_time_eq(g.as_bytes(), t.as_bytes()))
        };
        let (is_admin, is_data) = (is(admin), is(token));
        let refusal = if !is_admin && !is_data {
            Some(ApiError::Unauthorized)
        } else if destructive && !is_admin {
            Some(ApiError::Forbidden(if admin.is_some() {
                "retention and orphan collection need the admin token".into()
            } else {
                "retention and orphan collection over REST need an admin token (start the server with --admin-token or --admin-token-file)".into()
            }))
        } else {
            None
        };
        if let Some(e) = refusal {
            drain(&mut req.into_body().into_data_stream()).await;
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Most bytes of request headers (names and values) accepted; more gets 431.
const MAX_HEADER_BYTES: usize = 32 << 10;

/// Refuses requests whose headers add up to more than [`MAX_HEADER_BYTES`] (the HTTP parser
/// alone accepts hundreds of kilobytes), and query strings that are not percent-encoded
/// UTF-8 (which form decoding would otherwise repair silently).
async fn check_request_head(req: Request, next: Next) -> Response {
    if let Some(q) = req.uri().query()
        && !q.split(['&', '=']).all(dos_protocol::valid_percent_utf8)
    {
        drain(&mut req.into_body().into_data_stream()).await;
        return ApiError::BadRequest("the query string is not percent-encoded UTF-8".into())
            .into_response();
    }
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().to_string().len();
    if size > MAX_HEADER_BYTES {
        drain(&mut req.into_body().into_data_stream()).await;
        return ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        }
        .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Past `max_in_flight` requests at once, new ones get a 503 at once instead of queueing.
/// A request holds its permit until its response body has been sent (or dropped), so long
/// streamed GETs count too.
async fn limit_in_flight(
    State(limit): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    match limit.clone().try_acquire_owned() {
        Ok(permit) => {
            let resp = next.run(req).await;
            resp.map(|body| hold_until_sent(body, permit))
        }
        Err(_) => ApiError::Overloaded.into_response(),
    }
}

/// `body`, keeping `permit` until the body is finished or dropped.
fn hold_until_sent(body: Body, permit: OwnedSemaphorePermit) -> Body {
    Body::new(PermitBody {
        inner: body,
        _permit: permit,
    })
}

/// A response body that holds a request slot; everything else is the inner body's (its size
/// too, so a fixed-length answer keeps its `Content-Length`).
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn health(State(core): State<Arc<Core>>) -> Response {
    let live = core.bus.live_servers().len();
    axum::Json(serde_json::json!({ "status": "ok", "live_data_servers": live })).into_response()
}

#[derive(Deserialize)]
struct MaintenanceQuery {
    keep: Option<u64>,
    grace_secs: Option<u64>,
}

/// `POST /maintenance/{scrub|retention|orphans}[?keep=N][&grace_secs=S]`: runs the job and
/// streams its report as NDJSON, one line a second and a last one with `"done": true`. The
/// job runs to its end even if the client goes away.
async fn run_maintenance(
    State(maintenance): State<Arc<Maintenance>>,
    axum::extract::Path(job): axum::extract::Path<String>,
    Query(q): Query<MaintenanceQuery>,
) -> ApiResult<Response> {
    use crate::maintenance::{Job, JobParams};
    let job = Job::parse(&job).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no maintenance job {job:?}; there are scrub, retention, orphans, rebalance and drain:SERVER_ID"
        ))
    })?;
    let config = maintenance.config();
    let params = JobParams {
        keep: q.keep.unwrap_or(config.keep_versions),
        grace: q
            .grace_secs
            .map_or(config.orphans_grace, Duration::from_secs),
    };
    if params.keep == 0 {
        return Err(ApiError::BadRequest(
            "keep must be at least 1: the latest version is always kept".into(),
        ));
    }
    if job == Job::Orphans && params.grace < config.min_orphans_grace {
        return Err(ApiError::BadRequest(format!(
            "grace must be at least {} s on this server (its --min-orphans-grace)",
            config.min_orphans_grace.as_secs()
        )));
    }
    let run = maintenance.start(job, params)?;
    let lines = futures::stream::unfold(Some(run), |state| async move {
        let mut run = state?;
        let finished = tokio::select! {
            _ = &mut run.finished => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let mut line = serde_json::to_vec(&run.progress.snapshot()).unwrap_or_default();
        line.push(b'\n');
        let next = if finished { None } else { Some(run) };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), next))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// `GET /changes`: every change any API server of the cluster makes from now on, one JSON
/// object a line (`{"name", "version", "kind", "deleted"}`); `{"missed": true}` when some
/// were lost (whatever the reader cached may be stale); `{}` every 10 s while nothing
/// happens, so that idle connections stay open. Mounts follow it to keep their caches
/// coherent.
async fn changes(State(core): State<Arc<Core>>) -> Response {
    use dos_bus::ChangeEvent;
    let events = core.bus.changes().map(Some);
    let ticks =
        tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(Duration::from_secs(10)))
            .map(|_| None);
    let lines = futures::stream::select(events, ticks).map(|event| {
        let mut line = match event {
            Some(ChangeEvent::Changed(c)) => serde_json::to_vec(&c).unwrap_or_default(),
            Some(ChangeEvent::Missed) => br#"{"missed":true}"#.to_vec(),
            None => b"{}".to_vec(),
        };
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn name_from(uri: &Uri, prefix: &str) -> ApiResult<ObjectName> {
    let rest = uri.path().strip_prefix(prefix).unwrap_or_default();
    ObjectName::from_path(rest).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Deserialize, Default)]
struct VersionQuery {
    version: Option<String>,
}

/// `?version=N`; absent or 0 means the latest.
fn version_of(q: &VersionQuery) -> ApiResult<Option<u64>> {
    match q.version.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ApiError::BadRequest(format!("bad version {v:?}"))),
        },
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("header {name} is not ASCII"))),
    }
}

fn digest_of(headers: &HeaderMap) -> ApiResult<ContentHash> {
    parse_digest_header(header_str(headers, h::DIGEST)?)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn attrs_of(headers: &HeaderMap) -> ApiResult<WriteAttributes> {
    let kind = match header_str(headers, h::KIND)? {
        None => EntryKind::File,
        Some(k) => EntryKind::parse(k)
            .ok_or_else(|| ApiError::BadRequest(format!("bad {}: {k:?}", h::KIND)))?,
    };
    let mode = match header_str(headers, h::MODE)? {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m.trim(), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| ApiError::BadRequest(format!("bad {}: {m:?}", h::MODE)))?,
        ),
    };
    let mtime_ns = match header_str(headers, h::MTIME)? {
        None => None,
        Some(t) => Some(
            parse_rfc3339_ns(t)
                .ok_or_else(|| ApiError::BadRequest(format!("bad {}: {t:?}", h::MTIME)))?,
        ),
    };
    let supersedes = match header_str(headers, h::SUPERSEDES)? {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("bad {}: {v:?}", h::SUPERSEDES)))?,
        ),
    };
    let id = |key: &str| -> ApiResult<Option<u32>> {
        header_str(headers, key)?
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| ApiError::BadRequest(format!("bad {key}: {v:?}")))
            })
            .transpose()
    };
    let posix = PosixAttrs {
        uid: id(h::UID)?,
        gid: id(h::GID)?,
        rdev: id(h::RDEV)?.unwrap_or(0),
        atime_ns: match header_str(headers, h::ATIME)? {
            None => None,
            Some(t) => Some(
                parse_rfc3339_ns(t)
                    .ok_or_else(|| ApiError::BadRequest(format!("bad {}: {t:?}", h::ATIME)))?,
            ),
        },
        link: header_str(headers, h::LINK)?
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("bad {}: {v:?}", h::LINK)))
            })
            .transpose()?,
    };
    if posix.rdev != 0 && !matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
        return Err(ApiError::BadRequest(format!(
            "{} is for chardev and blockdev versions only",
            h::RDEV
        )));
    }
    Ok(WriteAttributes {
        kind,
        mode,
        mtime_ns,
        supersedes,
        posix,
    })
}

fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    header_str(headers, header::CONTENT_LENGTH.as_str())?
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| ApiError::BadRequest("bad Content-Length".into()))
        })
        .transpose()
}

fn json_record(status: StatusCode, v: &VersionRecord) -> Response {
    let mut resp = (status, axum::Json(v)).into_response();
    resp.headers_mut()
        .insert(h::VERSION, HeaderValue::from(v.version));
    resp
}

async fn put_object(
    State(core): State<Arc<Core>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut body = body.into_data_stream();
    let result = async {
        let name = name_from(&uri, "/objects/")?;
        let digest = digest_of(&headers)?;
        let attrs = attrs_of(&headers)?;
        let length = content_length(&headers)?;
        objects::put(&core, &name, digest, attrs, &mut body, length).await
    }
    .await;
    match result {
        Ok(v) => Ok(json_record(StatusCode::OK, &v)),
        Err(e) => {
            // A stalled body is not waited for again.
            if !matches!(
                e,
                ApiError::BodyStalled { .. } | ApiError::BodyTooSlow { .. }
            ) {
                drain(&mut body).await;
            }
            Err(e)
        }
    }
}

async fn delete_object(State(core): State<Arc<Core>>, uri: Uri) -> ApiResult<Response> {
    let name = name_from(&uri, "/objects/")?;
    let v = objects::delete(&core, &name).await?;
    Ok(json_record(StatusCode::OK, &v))
}

async fn post_object(
    State(core): State<Arc<Core>>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = name_from(&uri, "/objects/")?;
    match header_str(&headers, h::UPLOAD)? {
        None => {}
        Some(u) if u.trim().eq_ignore_ascii_case("stream") => {
            let token = resumable::open(&core, &name, attrs_of(&headers)?).await?;
            return upload_created(StatusCode::CREATED, &token, format!("/temp/{token}\n"));
        }
        Some(u) => {
            return Err(ApiError::BadRequest(format!(
                "bad {}: {u:?} (the one kind is \"stream\")",
                h::UPLOAD
            )));
        }
    }
    let digest = digest_of(&headers)?;
    let size = header_str(&headers, h::SIZE)?
        .ok_or_else(|| ApiError::BadRequest("missing Size header".into()))?
        .trim()
        .parse::<u64>()
        .map_err(|_| ApiError::BadRequest("bad Size header".into()))?;
    let attrs = attrs_of(&headers)?;
    match resumable::post(&core, &name, digest, size, attrs).await? {
        resumable::PostOutcome::Stored(v) => Ok(json_record(StatusCode::OK, &v)),
        resumable::PostOutcome::Upload(token) => {
            upload_created(StatusCode::CREATED, &token, format!("/temp/{token}\n"))
        }
    }
}

/// An answer naming upload `token` in its `Location`, with `body`.
fn upload_created(status: StatusCode, token: &str, body: impl IntoResponse) -> ApiResult<Response> {
    let location = format!("/temp/{token}");
    let mut resp = (status, body).into_response();
    let v = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::Internal("token is not a header value".into()))?;
    resp.headers_mut().insert(header::LOCATION, v);
    Ok(resp)
}

/// `POST /temp/TOKEN` with `Digest` (and optionally the mode and mtime headers): makes the
/// version of a streamed upload whose bytes all arrived.
async fn finish_temp(
    State(core): State<Arc<Core>>,
    axum::extract::Path(token): axum::extract::Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let t = resumable::verify(&token, &core.config.secret)?;
    let digest = digest_of(&headers)?;
    let v = resumable::finish(&core, &t, digest, &attrs_of(&headers)?).await?;
    Ok(json_record(StatusCode::OK, &v))
}

async fn head_temp(
    State(core): State<Arc<Core>>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let t = resumable::verify(&token, &core.config.secret)?;
    let accepted = resumable::accepted(&core, &t).await?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(accepted));
    Ok(resp)
}

async fn put_temp(
    State(core): State<Arc<Core>>,
    axum::extract::Path(token): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut body = body.into_data_stream();
    let result = async {
        let t = resumable::verify(&token, &core.config.secret)?;
        let offset = match header_str(&headers, header::RANGE.as_str())? {
            None => 0,
            Some(r) => r
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|o| o.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("bad Range {r:?}; use bytes=OFFSET-"))
                })?,
        };
        let length = content_length(&headers)?;
        let outcome = resumable::put(&core, &t, offset, length, &mut body).await?;
        Ok::<_, ApiError>((t.size, outcome))
    }
    .await;
    match result {
        Ok((size, resumable::PutOutcome::Partial { accepted })) => Ok(axum::Json(
            serde_json::json!({ "accepted": accepted, "size": size }),
        )
        .into_response()),
        Ok((_, resumable::PutOutcome::Done(v))) => Ok(json_record(StatusCode::OK, &v)),
        Ok((_, resumable::PutOutcome::Received(r))) => {
            let body = axum::Json(serde_json::json!({
                "hash": r.hash.to_hex(),
                "size": r.size,
                "upload": format!("/temp/{}", r.token),
            }));
            upload_created(StatusCode::ACCEPTED, &r.token, body)
        }
        Err(e) => {
            // A stalled body is not waited for again.
            if !matches!(
                e,
                ApiError::BodyStalled { .. } | ApiError::BodyTooSlow { .. }
            ) {
                drain(&mut body).await;
            }
            Err(e)
        }
    }
}

/// Whether `Accept-Encoding` (RFC 9110 §12.5.3) accepts gzip: `gzip`/`x-gzip` or `*` with a
/// non-zero q-value, unless gzip itself is listed with q=0.
pub fn accepts_gzip(value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    let mut gzip = None;
    let mut star = None;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    gzip.or(star).is_some_and(|q| q > 0.0)
}

async fn get_object(
    State(core): State<Arc<Core>>,
    method: Method,
    uri: Uri,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = name_from(&uri, "/objects/")?;
    let version = version_of(&q)?;
    let (record, hash) = objects::resolve(&core, &name, version).await?;
    let range = parse_range(header_str(&headers, header::RANGE.as_str())?, record.size)
        .map_err(|_| ApiError::RangeNotSatisfiable { size: record.size })?;
    let gzip = accepts_gzip(header_str(&headers, header::ACCEPT_ENCODING.as_str())?);
    let length = range.map_or(record.size, |r| r.len());

    let mut resp = Response::new(Body::empty());
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let hd = resp.headers_mut();
    let etag = format!("\"{}\"", hash.to_base64());
    let set = |hd: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            hd.insert(k, v);
        }
    };
    set(hd, "etag", etag);
    set(hd, "accept-ranges", "bytes".into());
    set(hd, "content-type", "application/octet-stream".into());
    let mtime = UNIX_EPOCH + Duration::from_nanos(record.mtime_ns.max(0) as u64);
    set(hd, "last-modified", httpdate::fmt_http_date(mtime));
    set(hd, h::VERSION, record.version.to_string());
    set(hd, h::MODE, format!("{:o}", record.mode));
    set(hd, h::MTIME, format_rfc3339_ns(record.mtime_ns));
    set(hd, h::KIND, record.kind.as_str().into());
    set(hd, h::CTIME, format_rfc3339_ns(record.ctime_ns));
    let p = &record.posix;
    if let Some(uid) = p.uid {
        set(hd, h::UID, uid.to_string());
    }
    if let Some(gid) = p.gid {
        set(hd, h::GID, gid.to_string());
    }
    if p.rdev != 0 {
        set(hd, h::RDEV, p.rdev.to_string());
    }
    if let Some(ns) = p.atime_ns {
        set(hd, h::ATIME, format_rfc3339_ns(ns));
    }
    if let Some(link) = p.link {
        set(hd, h::LINK, link.to_string());
    }
    set(hd, "vary", "accept-encoding".into());
    if let Some(r) = range {
        set(hd, "content-range", r.content_range(record.size));
    }
    if gzip {
        set(hd, "content-encoding", "gzip".into());
    } else {
        hd.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if method == Method::HEAD {
        return Ok(resp);
    }
    let content = objects::content_of(&core, &hash).await?;
    let decoder = objects::open_read(&core, &content, range).await?;
    let bytes = stream::object_bytes(&core, decoder, range, record.size)
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.public_message())));
    *resp.body_mut() = if gzip {
        Body::from_stream(stream::gzip(bytes))
    } else {
        Body::from_stream(bytes)
    };
    Ok(resp)
}

async fn versions(State(core): State<Arc<Core>>, uri: Uri) -> ApiResult<Response> {
    let rest = uri.path().strip_prefix("/versions/").unwrap_or_default();
    let from = if rest.is_empty() {
        VersionsFrom::All(None)
    } else {
        VersionsFrom::Name(name_from(&uri, "/versions/")?, 0)
    };
    let pages = stream::version_pages(&core, from).await?;
    let lines = pages.map(|page| {
        let page = page.map_err(|e| std::io::Error::other(e.public_message()))?;
        let mut out = Vec::new();
        for v in &page {
            serde_json::to_writer(&mut out, v).map_err(std::io::Error::other)?;
            out.push(b'\n');
        }
        Ok::<_, std::io::Error>(Bytes::from(out))
    });
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

async fn locate(
    State(core): State<Arc<Core>>,
    uri: Uri,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Response> {
    let name = name_from(&uri, "/locate/")?;
    let (_, hash) = objects::resolve(&core, &name, version_of(&q)?).await?;
    let content = objects::content_of(&core, &hash).await?;
    let holders = placement::holders(&core, &content).await;
    let map: std::collections::BTreeMap<String, String> = holders
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.first().map(|s| (i.to_string(), s.addr.clone())))
        .collect();
    if map.is_empty() {
        return Err(ApiError::NotFound(format!("no live server holds {name}")));
    }
    Ok(axum::Json(map).into_response())
}

/// A content hash in a path: 64 hex digits.
fn hash_in_path(hex: &str) -> ApiResult<dos_protocol::ContentHash> {
    dos_protocol::ContentHash::from_hex(hex)
        .map_err(|_| ApiError::BadRequest("a content hash is 64 hex digits".into()))
}

/// `GET /contents/HASH/redundancy`: how many of its shards answer healthy (cheap).
async fn content_redundancy(
    State(core): State<Arc<Core>>,
    axum::extract::Path(hex): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let hash = hash_in_path(&hex)?;
    Ok(axum::Json(crate::check::redundancy(&core, &hash).await?).into_response())
}

/// `POST /contents/HASH/check`: verifies it in full and rebuilds what is bad.
async fn content_check(
    State(core): State<Arc<Core>>,
    axum::extract::Path(hex): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let hash = hash_in_path(&hex)?;
    Ok(axum::Json(crate::check::check_hash(&core, &hash).await?).into_response())
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    delimiter: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    /// The tree as it was at this moment (any form `parse_moment` takes).
    at: Option<String>,
}

/// A time parameter: absent or empty is `None`; a malformed one is a 400.
fn moment(p: Option<&str>) -> ApiResult<Option<i64>> {
    match p.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => dos_protocol::parse_moment(s)
            .map(Some)
            .map_err(ApiError::BadRequest),
    }
}

#[derive(Deserialize)]
struct LogParams {
    #[serde(default)]
    prefix: String,
    since: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn log(State(core): State<Arc<Core>>, Query(p): Query<LogParams>) -> ApiResult<Response> {
    let since = moment(p.since.as_deref())?;
    let page = crate::timeline::page(
        &core,
        &p.prefix,
        since,
        p.cursor.as_deref().filter(|c| !c.is_empty()),
        p.limit.unwrap_or(1000),
    )
    .await?;
    Ok(axum::Json(page).into_response())
}

async fn list(State(core): State<Arc<Core>>, Query(p): Query<ListParams>) -> ApiResult<Response> {
    let delimiter = match p.delimiter.as_deref() {
        None | Some("") => None,
        Some(d) => {
            let mut chars = d.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii() => Some(c),
                _ => {
                    return Err(ApiError::BadRequest(
                        "delimiter must be a single ASCII character".into(),
                    ));
                }
            }
        }
    };
    let limit = p.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 10000".into()));
    }
    let page = core
        .meta
        .list(&ListQuery {
            prefix: p.prefix,
            delimiter,
            cursor: p.cursor.filter(|c| !c.is_empty()),
            limit,
            at: moment(p.at.as_deref())?,
        })
        .await?;
    Ok(axum::Json(page).into_response())
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn accept_encoding() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(accepts_gzip(Some("GZIP ; q=1.0")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("*, gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("br, deflate")));
        assert!(!accepts_gzip(None));
    }
}
