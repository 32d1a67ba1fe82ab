//! An in-test fake of the Elasticsearch REST API: exactly the calls the `ElasticStore` engine
//! makes, answered with Elasticsearch's documented response shapes, immediately consistent
//! (every write is searchable at once).
//!
//! It is a strict subset on purpose: unknown endpoints, query parameters, query shapes and sort
//! forms are refused with a 400, documents are checked against the index's strict mapping
//! (a `long` must fit 64 signed bits, an `integer` 32), and writes to a missing index answer
//! `index_not_found_exception` (as a cluster with `action.auto_create_index: false` does), so
//! the engine cannot silently depend on something this fake gets wrong.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// Handlers return a ready error response as their `Err`; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

type FailRule = Box<dyn Fn(&Method, &str) -> Option<u16> + Send + Sync>;

#[derive(Default)]
struct State_ {
    indices: BTreeMap<String, Index>,
    /// `METHOD path?query` of every request, as received (still percent-encoded).
    log: Vec<String>,
}

struct Shared {
    state: Mutex<State_>,
    fail: Mutex<Option<FailRule>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldType {
    Keyword,
    Long,
    Integer,
    Boolean,
    /// Base64, stored but not searchable.
    Binary,
}

impl FieldType {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "keyword" => Some(Self::Keyword),
            "long" => Some(Self::Long),
            "integer" => Some(Self::Integer),
            "boolean" => Some(Self::Boolean),
            "binary" => Some(Self::Binary),
            _ => None,
        }
    }
}

struct Index {
    uuid: String,
    mappings: Value,
    fields: BTreeMap<String, FieldType>,
    docs: BTreeMap<String, Doc>,
    next_seq_no: i64,
}

#[derive(Clone)]
struct Doc {
    source: Value,
    seq_no: i64,
    version: i64,
}

const PRIMARY_TERM: i64 = 1;

/// A running fake; it stops when the test's runtime ends.
pub struct FakeEs {
    pub url: String,
    shared: Arc<Shared>,
}

impl FakeEs {
    /// A fake on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A fake listening on `addr` (port 0: a free one), e.g. the bridge address that
    /// servers in network namespaces reach this machine on.
    pub async fn start_on(addr: std::net::SocketAddr) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State_::default()),
            fail: Mutex::new(None),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            shared,
        }
    }

    /// From now on, requests for which `rule(method, decoded path)` gives a status are
    /// answered with that status and an error body, and change nothing.
    pub fn fail_when(&self, rule: impl Fn(&Method, &str) -> Option<u16> + Send + Sync + 'static) {
        *self.shared.fail.lock().unwrap() = Some(Box::new(rule));
    }

    pub fn stop_failing(&self) {
        *self.shared.fail.lock().unwrap() = None;
    }

    /// Every request received so far, as `METHOD path?query` (not decoded).
    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// Creates an index directly, with any mapping (for example the original system's).
    pub fn create_index_raw(&self, name: &str, properties: Value) {
        let mappings = json!({ "properties": properties });
        let index = new_index(&mappings).unwrap();
        self.shared
            .state
            .lock()
            .unwrap()
            .indices
            .insert(name.to_string(), index);
    }

    /// Writes a document directly, bypassing the REST API (to simulate another writer).
    pub fn put_doc_raw(&self, index: &str, id: &str, source: Value) {
        let mut state = self.shared.state.lock().unwrap();
        let index = state.indices.get_mut(index).expect("no such index");
        let seq_no = index.next_seq_no;
        index.next_seq_no += 1;
        index.docs.insert(
            id.to_string(),
            Doc {
                source,
                seq_no,
                version: 1,
            },
        );
    }

    pub fn doc_ids(&self, index: &str) -> Vec<String> {
        let state = self.shared.state.lock().unwrap();
        state.indices[index].docs.keys().cloned().collect()
    }
}

fn new_index(mappings: &Value) -> Result<Index, Response> {
    let mut fields = BTreeMap::new();
    let props = mappings
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, def) in props {
        let ty = def
            .get("type")
            .and_then(Value::as_str)
            .and_then(FieldType::parse)
            .ok_or_else(|| {
                bad_request(
                    "mapper_parsing_exception",
                    format!("fake: unsupported mapping for field [{name}]: {def}"),
                )
            })?;
        fields.insert(name, ty);
    }
    Ok(Index {
        uuid: format!("uuid{}", fields.len()),
        mappings: mappings.clone(),
        fields,
        docs: BTreeMap::new(),
        next_seq_no: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Responses

fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn es_error(status: u16, ty: &str, reason: String, extra: Value) -> Response {
    let mut cause = json!({ "type": ty, "reason": reason });
    if let (Some(c), Some(e)) = (cause.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    reply(
        status,
        json!({
            "error": {
                "root_cause": [cause.clone()],
                "type": ty,
                "reason": cause["reason"],
            },
            "status": status,
        }),
    )
}

fn bad_request(ty: &str, reason: String) -> Response {
    es_error(400, ty, reason, json!({}))
}

fn index_not_found(index: &str) -> Response {
    es_error(
        404,
        "index_not_found_exception",
        format!("no such index [{index}]"),
        json!({
            "resource.type": "index_or_alias",
            "resource.id": index,
            "index_uuid": "_na_",
            "index": index,
        }),
    )
}

fn conflict(index: &Index, index_name: &str, id: &str, reason: String) -> Response {
    es_error(
        409,
        "version_conflict_engine_exception",
        format!("[{id}]: version conflict, {reason}"),
        json!({ "index_uuid": index.uuid, "shard": "0", "index": index_name }),
    )
}

fn shards() -> Value {
    json!({ "total": 2, "successful": 1, "failed": 0 })
}

// ---------------------------------------------------------------------------------------------
// Routing

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn parse_query(q: Option<&str>) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(&k.replace('+', " "));
        let v = decode(&v.replace('+', " "));
        match (k, v) {
            (Some(k), Some(v)) => {
                out.insert(k, v);
            }
            _ => {
                return Err(bad_request(
                    "illegal_argument_exception",
                    "bad query string".into(),
                ));
            }
        }
    }
    Ok(out)
}

/// Refuses any parameter outside `allowed`, as Elasticsearch does.
fn check_params(params: &BTreeMap<String, String>, allowed: &[&str]) -> Result<(), Response> {
    for k in params.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad_request(
                "illegal_argument_exception",
                format!("request contains unrecognized parameter: [{k}]"),
            ));
        }
    }
    Ok(())
}

/// `refresh`: "", "true", "false" or "wait_for". Returns whether a refresh is forced.
fn refresh_param(params: &BTreeMap<String, String>) -> Result<bool, Response> {
    match params.get("refresh").map(String::as_str) {
        None | Some("false") | Some("wait_for") => Ok(false),
        Some("") | Some("true") => Ok(true),
        Some(other) => Err(bad_request(
            "illegal_argument_exception",
            format!("Unknown value for refresh: [{other}]."),
        )),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = match uri.query() {
        Some(q) => format!("{method} {}?{q}", uri.path()),
        None => format!("{method} {}", uri.path()),
    };
    shared.state.lock().unwrap().log.push(raw);

    let segments: Option<Vec<String>> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let Some(segments) = segments else {
        return bad_request("illegal_argument_exception", "path is not UTF-8".into());
    };
    if let Some(rule) = shared.fail.lock().unwrap().as_ref()
        && let Some(status) = rule(&method, &format!("/{}", segments.join("/")))
    {
        return es_error(
            status,
            "fake_failure_exception",
            "injected by the test".into(),
            json!({}),
        );
    }
    let params = match parse_query(uri.query()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let json_body = if body.is_empty() {
        None
    } else {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") && !ct.starts_with("application/vnd.elasticsearch") {
            return es_error(
                406,
                "content_type_header_exception",
                format!("Content-Type header [{ct}] is not supported"),
                json!({}),
            );
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Some(v),
            Err(e) => return bad_request("parsing_exception", format!("bad JSON: {e}")),
        }
    };

    let mut state = shared.state.lock().unwrap();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let result = match (&method, seg.as_slice()) {
        (&Method::PUT, [index]) => {
            check_params(&params, &[]).and_then(|()| create_index(&mut state, index, json_body))
        }
        (&Method::GET, [index, "_mapping"]) => {
            check_params(&params, &[]).and_then(|()| get_mapping(&state, index))
        }
        (&Method::PUT | &Method::POST, [index, "_mapping"]) => {
            check_params(&params, &[]).and_then(|()| put_mapping(&mut state, index, json_body))
        }
        (&Method::PUT | &Method::POST, [index, "_create", id]) => {
            check_params(&params, &["refresh"]).and_then(|()| {
                write_doc(&mut state, index, id, json_body, &params, WriteMode::Create)
            })
        }
        (&Method::PUT | &Method::POST, [index, "_doc", id]) => check_params(
            &params,
            &["refresh", "op_type", "if_seq_no", "if_primary_term"],
        )
        .and_then(|()| {
            let mode = match params.get("op_type").map(String::as_str) {
                None | Some("index") => WriteMode::Index,
                Some("create") => WriteMode::Create,
                Some(other) => {
                    return Err(bad_request(
                        "illegal_argument_exception",
                        format!("opType must be 'create' or 'index', found: [{other}]"),
                    ));
                }
            };
            write_doc(&mut state, index, id, json_body, &params, mode)
        }),
        (&Method::GET, [index, "_doc", id]) => {
            check_params(&params, &[]).and_then(|()| get_doc(&state, index, id))
        }
        (&Method::DELETE, [index, "_doc", id]) => {
            check_params(&params, &["refresh", "if_seq_no", "if_primary_term"])
                .and_then(|()| delete_doc(&mut state, index, id, &params))
        }
        (&Method::GET | &Method::POST, [index, "_search"]) => {
            check_params(&params, &["allow_partial_search_results"])
                .and_then(|()| search(&state, index, json_body))
        }
        _ => Err(bad_request(
            "illegal_argument_exception",
            format!("fake: no handler for [{method}] {}", uri.path()),
        )),
    };
    result.unwrap_or_else(|r| r)
}

// ---------------------------------------------------------------------------------------------
// Index APIs

fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '_', '+'])
        && name != "."
        && name != ".."
        && name.chars().all(|c| {
            !c.is_ascii_uppercase()
                && !matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
                )
        })
}

fn create_index(state: &mut State_, name: &str, body: Option<Value>) -> Result<Response, Response> {
    if !valid_index_name(name) {
        return Err(bad_request(
            "invalid_index_name_exception",
            format!("Invalid index name [{name}]"),
        ));
    }
    if let Some(existing) = state.indices.get(name) {
        return Err(es_error(
            400,
            "resource_already_exists_exception",
            format!("index [{name}/{}] already exists", existing.uuid),
            json!({ "index_uuid": existing.uuid, "index": name }),
        ));
    }
    let body = body.unwrap_or_else(|| json!({}));
    let obj = body
        .as_object()
        .ok_or_else(|| bad_request("parsing_exception", "body must be an object".into()))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "mappings" | "settings") {
            return Err(bad_request(
                "parsing_exception",
                format!("unknown key [{k}] for create index"),
            ));
        }
    }
    let mappings = obj.get("mappings").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = mappings.as_object() {
        for k in m.keys() {
            if !matches!(k.as_str(), "dynamic" | "properties") {
                return Err(bad_request(
                    "mapper_parsing_exception",
                    format!("fake: unsupported mapping key [{k}]"),
                ));
            }
        }
    }
    if mappings.get("dynamic").and_then(Value::as_str) != Some("strict") {
        return Err(bad_request(
            "mapper_parsing_exception",
            "fake: only strict mappings are supported".into(),
        ));
    }
    let index = new_index(&mappings)?;
    state.indices.insert(name.to_string(), index);
    Ok(reply(
        200,
        json!({ "acknowledged": true, "shards_acknowledged": true, "index": name }),
    ))
}

/// `PUT /<index>/_mapping`: adds fields; changing the type of a mapped field is refused.
fn put_mapping(state: &mut State_, name: &str, body: Option<Value>) -> Result<Response, Response> {
    let index = state
        .indices
        .get_mut(name)
        .ok_or_else(|| index_not_found(name))?;
    let body = body.unwrap_or_else(|| json!({}));
    let added = new_index(&body)?;
    for (field, ty) in &added.fields {
        if index.fields.get(field).is_some_and(|t| t != ty) {
            return Err(bad_request(
                "illegal_argument_exception",
                format!("mapper [{field}] cannot be changed from its type"),
            ));
        }
    }
    let props = body.get("properties").cloned().unwrap_or_else(|| json!({}));
    if let (Some(have), Some(new)) = (
        index
            .mappings
            .get_mut("properties")
            .and_then(Value::as_object_mut),
        props.as_object(),
    ) {
        for (k, v) in new {
            have.insert(k.clone(), v.clone());
        }
    }
    index.fields.extend(added.fields);
    Ok(reply(200, json!({ "acknowledged": true })))
}

fn get_mapping(state: &State_, name: &str) -> Result<Response, Response> {
    let index = state
        .indices
        .get(name)
        .ok_or_else(|| index_not_found(name))?;
    Ok(reply(200, json!({ name: { "mappings": index.mappings } })))
}

// ---------------------------------------------------------------------------------------------
// Document APIs

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Create,
    Index,
}

fn check_id(id: &str) -> Result<(), Response> {
    if id.is_empty() || id.len() > 512 {
        return Err(bad_request(
            "action_request_validation_exception",
            format!(
                "Validation Failed: 1: id [{id}] is too long, must be no longer than 512 bytes \
                 but was: {};",
                id.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a document against the strict mapping of its index.
fn check_source(index: &Index, source: &Value) -> Result<(), Response> {
    let obj = source.as_object().ok_or_else(|| {
        bad_request(
            "mapper_parsing_exception",
            "failed to parse, document is empty".into(),
        )
    })?;
    for (field, value) in obj {
        let Some(ty) = index.fields.get(field) else {
            return Err(bad_request(
                "strict_dynamic_mapping_exception",
                format!(
                    "[1:2] mapping set to strict, dynamic introduction of [{field}] within \
                     [_doc] is not allowed"
                ),
            ));
        };
        let values: Vec<&Value> = match value {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let ok = match ty {
                _ if v.is_null() => true,
                FieldType::Keyword => v.is_string(),
                FieldType::Long => v.as_i64().is_some(),
                FieldType::Integer => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                FieldType::Boolean => v.is_boolean(),
                FieldType::Binary => v.as_str().is_some_and(|s| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                }),
            };
            if !ok {
                return Err(bad_request(
                    "document_parsing_exception",
                    format!("[1:2] failed to parse field [{field}] of type [{ty:?}]: {v}"),
                ));
            }
        }
    }
    Ok(())
}

fn write_doc(
    state: &mut State_,
    index_name: &str,
    id: &str,
    body: Option<Value>,
    params: &BTreeMap<String, String>,
    mode: WriteMode,
) -> Result<Response, Response> {
    check_id(id)?;
    let forced_refresh = refresh_param(params)?;
    let if_seq_no = params.get("if_seq_no").map(|v| v.parse::<i64>());
    let if_primary_term = params.get("if_primary_term").map(|v| v.parse::<i64>());
    let cond = match (if_seq_no, if_primary_term) {
        (None, None) => None,
        (Some(Ok(s)), Some(Ok(t))) if mode == WriteMode::Index => Some((s, t)),
        _ => {
            return Err(bad_request(
                "action_request_validation_exception",
                "Validation Failed: if_seq_no and if_primary_term must be set together, as \
                 numbers, and not with op_type create"
                    .into(),
            ));
        }
    };
    let source =
        body.ok_or_else(|| bad_request("parse_exception", "request body is required".into()))?;
    let index = state
        .indices
        .get_mut(index_name)
        .ok_or_else(|| index_not_found(index_name))?;
    check_source(index, &source)?;
    let existing = index.docs.get(id).cloned();
    if mode == WriteMode::Create
        && let Some(doc) = &existing
    {
        return Err(conflict(
            index,
            index_name,
            id,
            format!(
                "document already exists (current version [{}])",
                doc.version
            ),
        ));
    }
    if let Some((seq_no, term)) = cond {
        match &existing {
            None => {
                return Err(conflict(
                    index,
                    index_name,
                    id,
                    format!(
                        "required seqNo [{seq_no}], primary term [{term}]. but no document was \
                         found"
                    ),
                ));
            }
            Some(doc) if doc.seq_no != seq_no || term != PRIMARY_TERM => {
                return Err(conflict(
                    index,
                    index_name,
                    id,
                    format!(
                        "required seqNo [{seq_no}], primary term [{term}]. current document has \
                         seqNo [{}] and primary term [{PRIMARY_TERM}]",
                        doc.seq_no
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let seq_no = index.next_seq_no;
    index.next_seq_no += 1;
    let version = existing.as_ref().map_or(1, |d| d.version + 1);
    index.docs.insert(
        id.to_string(),
        Doc {
            source,
            seq_no,
            version,
        },
    );
    let (status, result) = if existing.is_some() {
        (200, "updated")
    } else {
        (201, "created")
    };
    let mut body = json!({
        "_index": index_name,
        "_id": id,
        "_version": version,
        "result": result,
        "_shards": shards(),
        "_seq_no": seq_no,
        "_primary_term": PRIMARY_TERM,
    });
    if forced_refresh {
        body["forced_refresh"] = json!(true);
    }
    Ok(reply(status, body))
}

/// `DELETE /<index>/_doc/<id>`: 200 `deleted`, 404 `not_found`, or 409 when `if_seq_no` /
/// `if_primary_term` do not match.
fn delete_doc(
    state: &mut State_,
    index_name: &str,
    id: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, Response> {
    check_id(id)?;
    let forced_refresh = refresh_param(params)?;
    let cond = match (params.get("if_seq_no"), params.get("if_primary_term")) {
        (None, None) => None,
        (Some(s), Some(t)) => match (s.parse::<i64>(), t.parse::<i64>()) {
            (Ok(s), Ok(t)) => Some((s, t)),
            _ => {
                return Err(bad_request(
                    "illegal_argument_exception",
                    "if_seq_no and if_primary_term must be numbers".into(),
                ));
            }
        },
        _ => {
            return Err(bad_request(
                "action_request_validation_exception",
                "Validation Failed: if_seq_no and if_primary_term must be set together".into(),
            ));
        }
    };
    let index = state
        .indices
        .get_mut(index_name)
        .ok_or_else(|| index_not_found(index_name))?;
    let seq_no = index.next_seq_no;
    let Some(existing) = index.docs.get(id).cloned() else {
        if let Some((s, t)) = cond {
            return Err(conflict(
                index,
                index_name,
                id,
                format!("required seqNo [{s}], primary term [{t}]. but no document was found"),
            ));
        }
        return Ok(reply(
            404,
            json!({ "_index": index_name, "_id": id, "result": "not_found",
                    "_shards": shards(), "_seq_no": seq_no, "_primary_term": PRIMARY_TERM }),
        ));
    };
    if let Some((s, t)) = cond
        && (existing.seq_no != s || t != PRIMARY_TERM)
    {
        return Err(conflict(
            index,
            index_name,
            id,
            format!(
                "required seqNo [{s}], primary term [{t}]. current document has seqNo [{}] and \
                 primary term [{PRIMARY_TERM}]",
                existing.seq_no
            ),
        ));
    }
    index.next_seq_no += 1;
    index.docs.remove(id);
    let mut body = json!({
        "_index": index_name,
        "_id": id,
        "_version": existing.version + 1,
        "result": "deleted",
        "_shards": shards(),
        "_seq_no": seq_no,
        "_primary_term": PRIMARY_TERM,
    });
    if forced_refresh {
        body["forced_refresh"] = json!(true);
    }
    Ok(reply(200, body))
}

fn get_doc(state: &State_, index_name: &str, id: &str) -> Result<Response, Response> {
    let index = state
        .indices
        .get(index_name)
        .ok_or_else(|| index_not_found(index_name))?;
    Ok(match index.docs.get(id) {
        Some(doc) => reply(
            200,
            json!({
                "_index": index_name,
                "_id": id,
                "_version": doc.version,
                "_seq_no": doc.seq_no,
                "_primary_term": PRIMARY_TERM,
                "found": true,
                "_source": doc.source,
            }),
        ),
        None => reply(
            404,
            json!({ "_index": index_name, "_id": id, "found": false }),
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Search

fn parsing(reason: String) -> Response {
    bad_request("parsing_exception", reason)
}

/// `{ "<one key>": value }`.
fn single(v: &Value, what: &str) -> Result<(String, Value), Response> {
    match v.as_object() {
        Some(o) if o.len() == 1 => {
            let (k, v) = o.iter().next().unwrap();
            Ok((k.clone(), v.clone()))
        }
        _ => Err(parsing(format!("[{what}] malformed: {v}"))),
    }
}

fn field_type(index: &Index, field: &str) -> Result<FieldType, Response> {
    index
        .fields
        .get(field)
        .copied()
        .ok_or_else(|| parsing(format!("fake: field [{field}] is not mapped")))
}

/// The value of `{ "<field>": v }` or `{ "<field>": { "value": v } }`.
fn field_value(v: &Value, what: &str) -> Result<(String, Value), Response> {
    let (field, inner) = single(v, what)?;
    let value = match &inner {
        Value::Object(o) => {
            if o.len() != 1 || !o.contains_key("value") {
                return Err(parsing(format!(
                    "fake: unsupported [{what}] options: {inner}"
                )));
            }
            o["value"].clone()
        }
        other => other.clone(),
    };
    Ok((field, value))
}

/// Compares a stored value with a query value of a field's type.
fn compare(ty: FieldType, doc: &Value, q: &Value) -> Result<Option<Ordering>, Response> {
    match ty {
        FieldType::Keyword => {
            let q = q.as_str().ok_or_else(|| {
                parsing(format!("fake: keyword query value must be a string: {q}"))
            })?;
            Ok(doc.as_str().map(|d| d.as_bytes().cmp(q.as_bytes())))
        }
        FieldType::Long | FieldType::Integer => {
            let q = q
                .as_i64()
                .ok_or_else(|| parsing(format!("fake: numeric query value must be a long: {q}")))?;
            Ok(doc.as_i64().map(|d| d.cmp(&q)))
        }
        FieldType::Binary => Err(parsing("fake: binary fields are not searchable".into())),
        FieldType::Boolean => {
            let q = q
                .as_bool()
                .ok_or_else(|| parsing(format!("fake: boolean query value must be a bool: {q}")))?;
            Ok(doc.as_bool().map(|d| d.cmp(&q)))
        }
    }
}

/// The values of `field` in a document (a field may hold an array).
fn values<'a>(source: &'a Value, field: &str) -> Vec<&'a Value> {
    match source.get(field) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a.iter().filter(|v| !v.is_null()).collect(),
        Some(v) => vec![v],
    }
}

/// A compiled query: what the fake understands (match_all, term, prefix, range, bool.filter).
enum Query {
    All,
    Term(String, FieldType, Value),
    Prefix(String, String),
    Range(String, FieldType, Vec<(String, Value)>),
    Filter(Vec<Query>),
}

fn compile(index: &Index, q: &Value) -> Result<Query, Response> {
    let (kind, body) = single(q, "query")?;
    match kind.as_str() {
        "match_all" => {
            if body.as_object().is_some_and(Map::is_empty) {
                Ok(Query::All)
            } else {
                Err(parsing("fake: match_all takes no options".into()))
            }
        }
        "term" => {
            let (field, value) = field_value(&body, "term")?;
            let ty = field_type(index, &field)?;
            compare(ty, &value, &value)?;
            Ok(Query::Term(field, ty, value))
        }
        "prefix" => {
            let (field, value) = field_value(&body, "prefix")?;
            if field_type(index, &field)? != FieldType::Keyword {
                return Err(parsing(format!(
                    "fake: prefix on non-keyword field [{field}]"
                )));
            }
            let value = value
                .as_str()
                .ok_or_else(|| parsing("fake: prefix value must be a string".into()))?;
            Ok(Query::Prefix(field, value.to_string()))
        }
        "range" => {
            let (field, bounds) = single(&body, "range")?;
            let ty = field_type(index, &field)?;
            let bounds = bounds
                .as_object()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| parsing("fake: range needs bounds".into()))?;
            let mut out = Vec::new();
            for (op, v) in bounds {
                if !matches!(op.as_str(), "gt" | "gte" | "lt" | "lte") {
                    return Err(parsing(format!("fake: unsupported range option [{op}]")));
                }
                compare(ty, v, v)?;
                out.push((op.clone(), v.clone()));
            }
            Ok(Query::Range(field, ty, out))
        }
        "bool" => {
            let obj = body
                .as_object()
                .ok_or_else(|| parsing("bool must be an object".into()))?;
            let mut out = Vec::new();
            for (clause, qs) in obj {
                if clause != "filter" {
                    return Err(parsing(format!("fake: unsupported bool clause [{clause}]")));
                }
                match qs {
                    Value::Array(a) => {
                        for q in a {
                            out.push(compile(index, q)?);
                        }
                    }
                    q => out.push(compile(index, q)?),
                }
            }
            Ok(Query::Filter(out))
        }
        other => Err(parsing(format!("fake: unknown query [{other}]"))),
    }
}

fn matches(q: &Query, source: &Value) -> bool {
    match q {
        Query::All => true,
        Query::Term(field, ty, value) => values(source, field)
            .into_iter()
            .any(|d| compare(*ty, d, value).ok().flatten() == Some(Ordering::Equal)),
        Query::Prefix(field, prefix) => values(source, field)
            .into_iter()
            .any(|d| d.as_str().is_some_and(|s| s.starts_with(prefix.as_str()))),
        Query::Range(field, ty, bounds) => values(source, field).into_iter().any(|d| {
            bounds.iter().all(|(op, v)| {
                let Ok(Some(ord)) = compare(*ty, d, v) else {
                    return false;
                };
                match op.as_str() {
                    "gt" => ord == Ordering::Greater,
                    "gte" => ord != Ordering::Less,
                    "lt" => ord == Ordering::Less,
                    _ => ord != Ordering::Greater,
                }
            })
        }),
        Query::Filter(qs) => qs.iter().all(|q| matches(q, source)),
    }
}

struct SortKey {
    field: String,
    ty: FieldType,
    desc: bool,
}

fn compile_sort(index: &Index, sort: &Value) -> Result<Vec<SortKey>, Response> {
    let items: Vec<Value> = match sort {
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    };
    let mut out = Vec::new();
    for item in items {
        let (field, desc) = match &item {
            Value::String(f) => (f.clone(), false),
            Value::Object(_) => {
                let (field, order) = single(&item, "sort")?;
                let order = match &order {
                    Value::String(s) => s.clone(),
                    Value::Object(o) if o.len() == 1 && o.contains_key("order") => {
                        o["order"].as_str().unwrap_or("").to_string()
                    }
                    _ => return Err(parsing(format!("fake: unsupported sort options: {order}"))),
                };
                match order.as_str() {
                    "asc" => (field, false),
                    "desc" => (field, true),
                    _ => return Err(parsing(format!("fake: bad sort order [{order}]"))),
                }
            }
            _ => return Err(parsing(format!("fake: unsupported sort: {item}"))),
        };
        let ty = field_type(index, &field)?;
        out.push(SortKey { field, ty, desc });
    }
    Ok(out)
}

/// The sort value of a document for one key (single-valued fields only).
fn sort_value(source: &Value, key: &SortKey) -> Value {
    values(source, &key.field)
        .first()
        .map(|v| (*v).clone())
        .unwrap_or(Value::Null)
}

fn cmp_sort_values(key: &SortKey, a: &Value, b: &Value) -> Ordering {
    // Missing values sort last whatever the order (Elasticsearch's default `_last`).
    let ord = match (a.is_null(), b.is_null()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => compare(key.ty, a, b)
            .ok()
            .flatten()
            .unwrap_or(Ordering::Equal),
    };
    if key.desc { ord.reverse() } else { ord }
}

fn cmp_tuples(keys: &[SortKey], a: &[Value], b: &[Value]) -> Ordering {
    for (i, key) in keys.iter().enumerate() {
        match cmp_sort_values(key, &a[i], &b[i]) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

fn search(state: &State_, index_name: &str, body: Option<Value>) -> Result<Response, Response> {
    let index = state
        .indices
        .get(index_name)
        .ok_or_else(|| index_not_found(index_name))?;
    let body = body.unwrap_or_else(|| json!({}));
    let obj = body
        .as_object()
        .ok_or_else(|| parsing("search body must be an object".into()))?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "query" | "sort" | "size" | "search_after" | "track_total_hits"
        ) {
            return Err(parsing(format!("fake: unsupported search key [{k}]")));
        }
    }
    let query = match obj.get("query") {
        Some(q) => compile(index, q)?,
        None => Query::All,
    };
    let size = match obj.get("size") {
        None => 10,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| parsing(format!("size must be a non-negative integer: {v}")))?,
    };
    if size > 10_000 {
        return Err(bad_request(
            "illegal_argument_exception",
            format!(
                "Result window is too large, from + size must be less than or equal to: \
                 [10000] but was [{size}]."
            ),
        ));
    }
    let keys = match obj.get("sort") {
        Some(s) => compile_sort(index, s)?,
        None => Vec::new(),
    };
    let after: Option<Vec<Value>> = match obj.get("search_after") {
        None => None,
        Some(Value::Array(a)) => {
            if keys.is_empty() {
                return Err(bad_request(
                    "illegal_argument_exception",
                    "fake: search_after without sort".into(),
                ));
            }
            if a.len() != keys.len() {
                return Err(bad_request(
                    "illegal_argument_exception",
                    format!(
                        "search_after has {} value(s) but sort has {}.",
                        a.len(),
                        keys.len()
                    ),
                ));
            }
            for (key, v) in keys.iter().zip(a) {
                compare(key.ty, v, v)?;
            }
            Some(a.clone())
        }
        Some(v) => return Err(parsing(format!("search_after must be an array: {v}"))),
    };
    let track_total = match obj.get("track_total_hits") {
        None | Some(Value::Bool(true)) => true,
        Some(Value::Bool(false)) => false,
        Some(v) => return Err(parsing(format!("fake: unsupported track_total_hits {v}"))),
    };

    let mut hits: Vec<(&String, &Doc, Vec<Value>)> = index
        .docs
        .iter()
        .filter(|(_, d)| matches(&query, &d.source))
        .map(|(id, d)| {
            (
                id,
                d,
                keys.iter().map(|k| sort_value(&d.source, k)).collect(),
            )
        })
        .collect();
    let total = hits.len();
    // Ties keep index order (by `_id` here), as Elasticsearch's doc-id tie-break does.
    hits.sort_by(|a, b| cmp_tuples(&keys, &a.2, &b.2));
    if let Some(after) = &after {
        hits.retain(|h| cmp_tuples(&keys, &h.2, after) == Ordering::Greater);
    }
    hits.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let sorted = !keys.is_empty();
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|(id, doc, sort)| {
            let mut hit = json!({
                "_index": index_name,
                "_id": id,
                "_score": if sorted { Value::Null } else { json!(1.0) },
                "_source": doc.source,
            });
            if sorted {
                hit["sort"] = Value::Array(sort);
            }
            hit
        })
        .collect();
    let mut hits_obj = json!({
        "max_score": if sorted { Value::Null } else { json!(1.0) },
        "hits": hits,
    });
    if track_total {
        hits_obj["total"] = json!({ "value": total, "relation": "eq" });
    }
    Ok(reply(
        200,
        json!({
            "took": 1,
            "timed_out": false,
            "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
            "hits": hits_obj,
        }),
    ))
}
