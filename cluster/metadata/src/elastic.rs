//! The Elasticsearch metadata engine, for a cluster of API servers.
//!
//! # Indices
//!
//! All three are created by [`ElasticStore::create_indices`] (`dos-server setup`) with strict
//! mappings; the engine checks them before its first request and never relies on index
//! auto-creation, so a missing `setup` is a clear error instead of a dynamically mapped index.
//!
//! - `metadata`: one document per version, `_id` = `<name>_<version>`; fields `name`
//!   (keyword), `version` (long), `size` (long, so objects of 2 GiB and more work), `hash`
//!   (keyword, base64 SHA-256, `""` for a delete marker), `mtime` (long, ns), `mode` (integer),
//!   `kind` (keyword), `uid`, `gid`, `rdev`, `atime`, `ctime` and `link` (long; absent when not
//!   recorded, and `dos-server setup` adds them to an index made before them). A name longer than 491 bytes (an `_id` holds at most 512) or starting
//!   with `#` is keyed by `#<hex SHA-256 of the name>` instead; every read checks the stored
//!   `name`.
//! - `heads`: one document per name, `_id` = the name (same keying), holding the fields of the
//!   name's latest version plus `live` (false when that version is a delete marker).
//! - `contents`: one document per content hash, `_id` = its hex; `hash` (keyword, base64),
//!   `size` (long), `placement` (keyword array of server ids, index = shard index) and
//!   `touched` (long, ns: last write or dedup use, which the orphan collector respects).
//!
//! Names only ever travel as JSON string values in request bodies or as percent-encoded path
//! segments of document ids (the client encodes them); never in a `q=` query string, so `*`,
//! `?`, `:` and friends mean nothing to Elasticsearch.
//!
//! # Version allocation
//!
//! `add_version` reads the head (a realtime GET by id), then writes `<name>_<latest+1>` with a
//! create-only write (`_create`). A 409 means another writer owns that number: it tries the
//! next one, at most 1000 times (then the store is reported unavailable). Every number below a
//! created one exists, so versions are unique and gap-free under any number of writers. After
//! the version exists the head is moved forward with optimistic concurrency
//! (`if_seq_no`/`if_primary_term`, re-read on 409) and never backwards: a writer whose version
//! is already older than the head leaves it alone.
//!
//! # Read-after-write
//!
//! Reads that must see the latest write never search: "latest" is the head document read by
//! GET by id, which Elasticsearch answers in real time from its translog whatever the refresh
//! interval. A specific version is a GET of `<name>_<v>`; contents are a GET of the hash.
//! Because the head is written after the version, a writer that dies (or loses ES) between the
//! two leaves a head one or more versions behind. So "latest" also probes `<name>_<head+1>`,
//! `+2` … by GET until one is missing (normally one extra GET that misses) and repairs the head
//! when it finds such a version: the versions in `metadata` are the truth and the head a
//! realtime pointer into them.
//!
//! Listings (`list` reads `heads`, `list_versions` reads `metadata`) are searches, which only
//! see refreshed documents. The [`MetadataStore`] contract asks that every successful write be
//! visible to the next read, and dosfs relies on it (`rm -r` then `rmdir` must see the
//! directory empty), so by default every version and head write is sent with `refresh=true`
//! ([`WriteRefresh::Immediate`]): the shard is refreshed before the write returns, which costs
//! a small segment per write but not the up-to-a-second wait of `refresh=wait_for` (a second
//! per file for a sequential `cp -r`). [`WriteRefresh::WaitFor`] and [`WriteRefresh::None`]
//! (listings lag by at most the refresh interval; GETs stay exact) trade that off differently.
//! One remaining window: when two writers race on one name, the one whose version lost the
//! head race returns without a refresh of its own, so for a moment a listing may show the head
//! before the winner's refresh.
//!
//! Paging never uses `from`: `list_versions` sorts by (`name`, `version`) and resumes with
//! `search_after`; `list` sorts `heads` by `name`, resumes with `search_after` and jumps past a
//! common prefix with a `range` (`name >= successor`), grouping by the delimiter in Rust like
//! the SQLite engine. Searches are sent with `allow_partial_search_results=false`, so a failed
//! shard is an error rather than a silently short page. (`prefix` and `range` queries on a
//! keyword field need `search.allow_expensive_queries`, which is on unless an operator turned
//! it off.)
//!
//! # Errors
//!
//! Connection failures, timeouts, 5xx, a missing index and any answer that is not the
//! documented shape are [`MetadataError::Unavailable`]; only a document Elasticsearch reports
//! as `found: false` is "not found". Each request has a timeout (30 s by default); the HTTP
//! client keeps a connection pool and reconnects by itself after an outage.

mod doc;
mod reply;

use std::time::Duration;

use async_trait::async_trait;
use dos_protocol::{ChangeCursor, ContentHash, ListPage, ObjectName, VersionRecord};
use elasticsearch::auth::Credentials;
use elasticsearch::http::Url;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{IndicesCreateParts, IndicesGetMappingParts, IndicesPutMappingParts};
use elasticsearch::params::Refresh;
use elasticsearch::{CreateParts, DeleteParts, Elasticsearch, GetParts, IndexParts, SearchParts};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::listing::{AtRows, PageBuilder, Step};
use crate::{
    ContentRecord, ListQuery, MetadataError, MetadataStore, NewVersion, PlacementMove,
    VersionsFrom, apply_moves,
};
use doc::{ContentDoc, HeadDoc, IndexKind, VersionDoc, content_id, head_id, version_id};
use reply::{GetReply, Reply, SearchReply};

/// How many create conflicts one `add_version` accepts before giving up.
const MAX_CREATE_ATTEMPTS: u32 = 1000;
/// How many conditional-write conflicts one head update accepts before giving up.
const MAX_HEAD_ATTEMPTS: u32 = 1000;
/// How far past the head "latest" probes for versions whose head update was lost.
const MAX_PROBE: u32 = 1000;

/// When the documents of a version write become visible to searches (listings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteRefresh {
    /// `refresh=true`: visible before the write returns (the default; see the module docs).
    #[default]
    Immediate,
    /// `refresh=wait_for`: the write returns after the next scheduled refresh.
    WaitFor,
    /// No refresh: listings lag by up to the index refresh interval (reads by id stay exact).
    None,
}

/// Options of [`ElasticStore::connect_with_options`].
#[derive(Debug, Clone)]
pub struct ElasticOptions {
    /// Prepended to every index name (`<prefix>metadata`, `<prefix>heads`,
    /// `<prefix>contents`): lowercase letters, digits, `-`, `_` and `.`, not starting with
    /// `-`, `_` or `.`.
    pub index_prefix: String,
    /// Timeout of each request, from connecting to the end of the response body.
    pub request_timeout: Duration,
    pub write_refresh: WriteRefresh,
}

impl Default for ElasticOptions {
    fn default() -> Self {
        Self {
            index_prefix: String::new(),
            request_timeout: Duration::from_secs(30),
            write_refresh: WriteRefresh::Immediate,
        }
    }
}

/// The Elasticsearch engine. Cheap to share behind an `Arc`; the client inside pools its
/// connections.
pub struct ElasticStore {
    client: Elasticsearch,
    metadata: String,
    heads: String,
    contents: String,
    write_refresh: WriteRefresh,
    /// Set once the three indices were seen with the right mappings.
    ready: OnceCell<()>,
}

impl std::fmt::Debug for ElasticStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticStore")
            .field("metadata", &self.metadata)
            .field("heads", &self.heads)
            .field("contents", &self.contents)
            .field("write_refresh", &self.write_refresh)
            .finish_non_exhaustive()
    }
}

/// The latest-version pointer of a name, with what a conditional write needs.
#[derive(Debug, Clone)]
struct Head {
    doc: HeadDoc,
    seq_no: i64,
    primary_term: i64,
}

fn bad_config(msg: String) -> MetadataError {
    MetadataError::BadRequest(msg)
}

fn check_prefix(prefix: &str) -> Result<(), MetadataError> {
    let ok_chars = prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let ok_start = !prefix.starts_with(['-', '_', '.', '+']);
    if ok_chars && ok_start && prefix.len() <= 200 {
        Ok(())
    } else {
        Err(bad_config(format!(
            "invalid Elasticsearch index prefix {prefix:?}: use lowercase letters, digits, \
             '-', '_' and '.', not at the start"
        )))
    }
}

/// Parses `ES_SERVER`: `http(s)://[user:password@]host:port[/path]`, or `host:port` (http).
/// Credentials in the URL become Basic authentication and are removed from the URL.
fn parse_url(url: &str) -> Result<(Url, Option<Credentials>), MetadataError> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let mut parsed = Url::parse(&with_scheme)
        .map_err(|e| bad_config(format!("invalid Elasticsearch URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad_config(format!(
            "invalid Elasticsearch URL {url:?}: expected http(s)://host:port"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad_config(format!(
            "invalid Elasticsearch URL {url:?}: no query or fragment allowed"
        )));
    }
    let credentials = if parsed.username().is_empty() {
        None
    } else {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad_config("Elasticsearch URL credentials are not UTF-8".into()))
        };
        let user = decode(parsed.username())?;
        let password = decode(parsed.password().unwrap_or(""))?;
        parsed
            .set_username("")
            .and_then(|()| parsed.set_password(None))
            .map_err(|()| bad_config("cannot strip credentials from the URL".into()))?;
        Some(Credentials::Basic(user, password))
    };
    Ok((parsed, credentials))
}

impl ElasticStore {
    /// A store on the cluster at `url` (for example `http://127.0.0.1:9200`), with the default
    /// index names. Does not contact the server.
    pub fn connect(url: &str) -> Result<Self, MetadataError> {
        Self::connect_with_options(url, ElasticOptions::default())
    }

    /// Like [`connect`](Self::connect), with every index name prefixed by `prefix`.
    pub fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, MetadataError> {
        Self::connect_with_options(
            url,
            ElasticOptions {
                index_prefix: prefix.to_string(),
                ..ElasticOptions::default()
            },
        )
    }

    pub fn connect_with_options(url: &str, options: ElasticOptions) -> Result<Self, MetadataError> {
        check_prefix(&options.index_prefix)?;
        let (url, credentials) = parse_url(url)?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(options.request_timeout);
        if let Some(c) = credentials {
            builder = builder.auth(c);
        }
        let transport = builder
            .build()
            .map_err(|e| bad_config(format!("cannot build the Elasticsearch client: {e}")))?;
        let name = |kind: IndexKind| format!("{}{}", options.index_prefix, kind.base_name());
        Ok(Self {
            client: Elasticsearch::new(transport),
            metadata: name(IndexKind::Metadata),
            heads: name(IndexKind::Heads),
            contents: name(IndexKind::Contents),
            write_refresh: options.write_refresh,
            ready: OnceCell::new(),
        })
    }

    /// The names of the indices this store uses: metadata, heads, contents.
    pub fn index_names(&self) -> [&str; 3] {
        [&self.metadata, &self.heads, &self.contents]
    }

    fn index(&self, kind: IndexKind) -> &str {
        match kind {
            IndexKind::Metadata => &self.metadata,
            IndexKind::Heads => &self.heads,
            IndexKind::Contents => &self.contents,
        }
    }

    /// Creates the three indices with their mappings, leaving existing ones alone (after
    /// checking their mappings, and adding the fields an index made by an older version
    /// lacks). Returns one line per index: "created index X", "index X already exists" or
    /// "index X gained fields …".
    pub async fn create_indices(&self) -> Result<Vec<String>, MetadataError> {
        let mut done = Vec::new();
        for kind in IndexKind::ALL {
            let index = self.index(kind);
            let sent = self
                .client
                .indices()
                .create(IndicesCreateParts::Index(index))
                .body(kind.create_body())
                .send()
                .await;
            let reply = Reply::read("create index", sent).await?;
            if reply.is_success() {
                done.push(format!("created index {index}"));
            } else if reply.status == 400
                && reply.error_type() == Some("resource_already_exists_exception")
            {
                let missing = self.missing_fields(kind).await?;
                if missing.is_empty() {
                    done.push(format!("index {index} already exists"));
                } else {
                    self.add_fields(kind, &missing).await?;
                    let names: Vec<&str> = missing.iter().map(|(f, _)| *f).collect();
                    done.push(format!("index {index} gained fields {}", names.join(", ")));
                }
                self.check_index(kind).await?;
            } else {
                return Err(reply.unexpected(&format!("create index {index}")));
            }
        }
        Ok(done)
    }

    /// Checks that the three indices exist with the mappings this engine needs. A missing
    /// index is `Unavailable` (run `dos-server setup`); a wrong mapping is `Corrupt`.
    pub async fn check_indices(&self) -> Result<(), MetadataError> {
        for kind in IndexKind::ALL {
            self.check_index(kind).await?;
        }
        // Already set when another task checked first; either way the indices are fine.
        let _ = self.ready.set(());
        Ok(())
    }

    async fn check_index(&self, kind: IndexKind) -> Result<(), MetadataError> {
        let mappings = self.mappings(kind).await?;
        kind.check_mappings(self.index(kind), &mappings)
    }

    /// Fields this engine needs that the index does not map at all (an index made by an
    /// older version); a field mapped with another type is not "missing" but `Corrupt`.
    async fn missing_fields(
        &self,
        kind: IndexKind,
    ) -> Result<Vec<(&'static str, &'static str)>, MetadataError> {
        let mappings = self.mappings(kind).await?;
        Ok(kind.missing_fields(&mappings))
    }

    async fn add_fields(
        &self,
        kind: IndexKind,
        fields: &[(&'static str, &'static str)],
    ) -> Result<(), MetadataError> {
        let index = self.index(kind);
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(f, ty)| (f.to_string(), json!({ "type": ty })))
            .collect();
        let sent = self
            .client
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&[index]))
            .body(json!({ "properties": properties }))
            .send()
            .await;
        let reply = Reply::read("put mapping", sent).await?;
        if reply.is_success() {
            Ok(())
        } else {
            Err(reply.unexpected(&format!("put mapping of {index}")))
        }
    }

    async fn mappings(&self, kind: IndexKind) -> Result<Value, MetadataError> {
        let index = self.index(kind);
        let sent = self
            .client
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[index]))
            .send()
            .await;
        let reply = Reply::read("get mapping", sent).await?;
        if reply.status == 404 && reply.error_type() == Some("index_not_found_exception") {
            return Err(MetadataError::Unavailable(format!(
                "Elasticsearch index {index} does not exist; run `dos-server setup`"
            )));
        }
        if !reply.is_success() {
            return Err(reply.unexpected(&format!("get mapping of {index}")));
        }
        // `{ "<concrete index>": { "mappings": { ... } } }`; an alias names one index.
        let mappings = reply
            .body
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.values().next())
            .and_then(|i| i.get("mappings"))
            .cloned()
            .ok_or_else(|| reply.unexpected(&format!("get mapping of {index}")))?;
        Ok(mappings)
    }

    /// Checks the indices once, before the first request of this store.
    async fn ready(&self) -> Result<(), MetadataError> {
        if self.ready.initialized() {
            return Ok(());
        }
        self.check_indices().await
    }

    fn refresh(&self) -> Option<Refresh> {
        match self.write_refresh {
            WriteRefresh::Immediate => Some(Refresh::True),
            WriteRefresh::WaitFor => Some(Refresh::WaitFor),
            WriteRefresh::None => None,
        }
    }

    /// GET by id (realtime). `None` only when Elasticsearch says `found: false`. Retried.
    async fn get_doc(&self, index: &str, id: &str) -> Result<Option<GetReply>, MetadataError> {
        retry_reads(|| self.get_doc_once(index, id)).await
    }

    async fn get_doc_once(&self, index: &str, id: &str) -> Result<Option<GetReply>, MetadataError> {
        let sent = self.client.get(GetParts::IndexId(index, id)).send().await;
        let reply = Reply::read("get", sent).await?;
        let found = reply.body.get("found").and_then(Value::as_bool);
        match (reply.status, found) {
            (404, Some(false)) | (200, Some(false)) => Ok(None),
            (200, Some(true)) => reply.parse("get").map(Some),
            _ => Err(reply.unexpected(&format!("get from {index}"))),
        }
    }

    /// Create-only write. `Ok(false)`: a document with that id already exists.
    async fn create_doc(
        &self,
        index: &str,
        id: &str,
        body: Value,
        refresh: Option<Refresh>,
    ) -> Result<bool, MetadataError> {
        let mut request = self
            .client
            .create(CreateParts::IndexId(index, id))
            .body(body);
        if let Some(r) = refresh {
            request = request.refresh(r);
        }
        let reply = Reply::read("create", request.send().await).await?;
        if reply.is_success() {
            Ok(true)
        } else if reply.is_version_conflict() {
            Ok(false)
        } else {
            Err(reply.unexpected(&format!("create in {index}")))
        }
    }

    /// Write (create or replace), optionally only if the document is still at
    /// `(seq_no, primary_term)`. `Ok(false)`: it was not (409).
    async fn index_doc(
        &self,
        index: &str,
        id: &str,
        body: Value,
        if_at: Option<(i64, i64)>,
        refresh: Option<Refresh>,
    ) -> Result<bool, MetadataError> {
        let mut request = self.client.index(IndexParts::IndexId(index, id)).body(body);
        if let Some((seq_no, primary_term)) = if_at {
            request = request.if_seq_no(seq_no).if_primary_term(primary_term);
        }
        if let Some(r) = refresh {
            request = request.refresh(r);
        }
        let reply = Reply::read("index", request.send().await).await?;
        if reply.is_success() {
            Ok(true)
        } else if reply.is_version_conflict() {
            Ok(false)
        } else {
            Err(reply.unexpected(&format!("write to {index}")))
        }
    }

    /// Delete by id, optionally only if the document is still at `(seq_no, primary_term)`.
    /// `Ok(false)`: there was no such document, or it had changed (409).
    async fn delete_doc(
        &self,
        index: &str,
        id: &str,
        if_at: Option<(i64, i64)>,
    ) -> Result<bool, MetadataError> {
        let mut request = self.client.delete(DeleteParts::IndexId(index, id));
        if let Some((seq_no, primary_term)) = if_at {
            request = request.if_seq_no(seq_no).if_primary_term(primary_term);
        }
        if let Some(r) = self.refresh() {
            request = request.refresh(r);
        }
        let reply = Reply::read("delete", request.send().await).await?;
        if reply.is_success() {
            Ok(true)
        } else if reply.status == 404 || reply.is_version_conflict() {
            Ok(false)
        } else {
            Err(reply.unexpected(&format!("delete from {index}")))
        }
    }

    /// The content document of `hash` with its `(seq_no, primary_term)`.
    async fn read_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<(ContentDoc, (i64, i64))>, MetadataError> {
        let Some((source, at)) = self
            .get_with_seq_no(&self.contents, &content_id(hash))
            .await?
        else {
            return Ok(None);
        };
        let doc: ContentDoc = serde_json::from_value(source)
            .map_err(|e| MetadataError::Corrupt(format!("content document of {hash}: {e}")))?;
        Ok(Some((doc, at)))
    }

    /// GET by id with the document's `(seq_no, primary_term)`, for a conditional write.
    async fn get_with_seq_no(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<(Value, (i64, i64))>, MetadataError> {
        let Some(got) = self.get_doc(index, id).await? else {
            return Ok(None);
        };
        match (got.source, got.seq_no, got.primary_term) {
            (Some(source), Some(seq_no), Some(primary_term)) => {
                Ok(Some((source, (seq_no, primary_term))))
            }
            _ => Err(MetadataError::Unavailable(
                "elasticsearch get: response lacks _source, _seq_no or _primary_term".into(),
            )),
        }
    }

    /// The `_source` of every hit of a search. Retried.
    async fn search(&self, index: &str, body: Value) -> Result<Vec<Value>, MetadataError> {
        retry_reads(|| self.search_once(index, body.clone())).await
    }

    async fn search_once(&self, index: &str, body: Value) -> Result<Vec<Value>, MetadataError> {
        let sent = self
            .client
            .search(SearchParts::Index(&[index]))
            .allow_partial_search_results(false)
            .body(body)
            .send()
            .await;
        let reply = Reply::read("search", sent).await?;
        if !reply.is_success() {
            return Err(reply.unexpected(&format!("search of {index}")));
        }
        let parsed: SearchReply = reply.parse("search")?;
        Ok(parsed.hits.hits.into_iter().map(|h| h.source).collect())
    }

    async fn read_head(&self, name: &ObjectName) -> Result<Option<Head>, MetadataError> {
        let Some((source, (seq_no, primary_term))) = self
            .get_with_seq_no(&self.heads, &head_id(name.as_str()))
            .await?
        else {
            return Ok(None);
        };
        let doc: HeadDoc = serde_json::from_value(source)
            .map_err(|e| MetadataError::Corrupt(format!("head of {name:?}: {e}")))?;
        if doc.doc.name != name.as_str() {
            return Err(MetadataError::Corrupt(format!(
                "head document of {name:?} holds {:?}",
                doc.doc.name
            )));
        }
        Ok(Some(Head {
            doc,
            seq_no,
            primary_term,
        }))
    }

    async fn read_version(
        &self,
        name: &ObjectName,
        version: u64,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        let id = version_id(name.as_str(), version);
        let Some(got) = self.get_doc(&self.metadata, &id).await? else {
            return Ok(None);
        };
        let source = got.source.ok_or_else(|| {
            MetadataError::Unavailable("elasticsearch get: response lacks _source".into())
        })?;
        let doc: VersionDoc = serde_json::from_value(source)
            .map_err(|e| MetadataError::Corrupt(format!("version document {id:?}: {e}")))?;
        if doc.name != name.as_str() || doc.version != version {
            return Err(MetadataError::Corrupt(format!(
                "version document {id:?} holds version {} of {:?}",
                doc.version, doc.name
            )));
        }
        doc.into_record().map(Some)
    }

    /// Moves the head of `rec.name` forward to `rec`, unless it already is at `rec.version` or
    /// later. `known` is the head as last read (it may be stale).
    async fn advance_head(
        &self,
        rec: &VersionRecord,
        mut known: Option<Head>,
    ) -> Result<(), MetadataError> {
        let id = head_id(rec.name.as_str());
        let body = serde_json::to_value(HeadDoc {
            doc: VersionDoc::from_record(rec)?,
            live: !rec.is_delete_marker(),
        })
        .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
        for _ in 0..MAX_HEAD_ATTEMPTS {
            let written = match &known {
                Some(head) if head.doc.doc.version >= rec.version => return Ok(()),
                Some(head) => {
                    self.index_doc(
                        &self.heads,
                        &id,
                        body.clone(),
                        Some((head.seq_no, head.primary_term)),
                        self.refresh(),
                    )
                    .await?
                }
                None => {
                    self.create_doc(&self.heads, &id, body.clone(), self.refresh())
                        .await?
                }
            };
            if written {
                return Ok(());
            }
            known = self.read_head(&rec.name).await?;
        }
        Err(MetadataError::Unavailable(format!(
            "head of {:?} kept changing; gave up after {MAX_HEAD_ATTEMPTS} attempts",
            rec.name
        )))
    }

    /// The latest version: the head, then any versions written after it whose head update
    /// was lost (repairing the head when there are).
    async fn latest(&self, name: &ObjectName) -> Result<Option<VersionRecord>, MetadataError> {
        let head = self.read_head(name).await?;
        let mut latest = match &head {
            Some(h) => Some(h.doc.doc.clone().into_record()?),
            None => None,
        };
        let head_version = latest.as_ref().map_or(0, |r| r.version);
        for _ in 0..MAX_PROBE {
            let next = latest.as_ref().map_or(0, |r| r.version) + 1;
            match self.read_version(name, next).await? {
                Some(rec) => latest = Some(rec),
                None => break,
            }
        }
        if let Some(rec) = &latest
            && rec.version > head_version
        {
            tracing::info!(
                name = %name,
                head = head_version,
                latest = rec.version,
                "repairing a head left behind by an interrupted write"
            );
            if let Err(e) = self.advance_head(rec, head).await {
                tracing::warn!(name = %name, error = %e, "could not repair the head");
            }
        }
        Ok(latest)
    }

    /// Up to `batch` live heads in name order, from `start` (inclusive or not), under `prefix`.
    async fn search_heads(
        &self,
        prefix: &str,
        start: &(String, bool),
        batch: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        let mut filter = vec![json!({ "term": { "live": true } })];
        if !prefix.is_empty() {
            filter.push(json!({ "prefix": { "name": prefix } }));
        }
        let mut body = json!({
            "size": batch,
            "track_total_hits": false,
            "sort": [{ "name": "asc" }],
        });
        if start.1 {
            if start.0.as_str() > prefix {
                filter.push(json!({ "range": { "name": { "gte": start.0 } } }));
            }
        } else {
            body["search_after"] = json!([start.0]);
        }
        body["query"] = json!({ "bool": { "filter": filter } });
        let hits = self.search(&self.heads, body).await?;
        hits.into_iter()
            .map(|source| {
                let head: HeadDoc = serde_json::from_value(source)
                    .map_err(|e| MetadataError::Corrupt(format!("head document: {e}")))?;
                head.doc.into_record()
            })
            .collect()
    }

    /// Up to `batch` versions with a ctime at or before `at`, in ascending name order and
    /// each name's newest first, from `start` (inclusive or not), under `prefix`.
    async fn search_versions_at(
        &self,
        prefix: &str,
        start: &(String, bool),
        at: i64,
        batch: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        let mut filter = vec![json!({ "range": { "ctime": { "lte": at } } })];
        if !prefix.is_empty() {
            filter.push(json!({ "prefix": { "name": prefix } }));
        }
        let op = if start.1 { "gte" } else { "gt" };
        filter.push(json!({ "range": { "name": { op: start.0 } } }));
        let body = json!({
            "size": batch,
            "track_total_hits": false,
            "sort": [{ "name": "asc" }, { "version": "desc" }],
            "query": { "bool": { "filter": filter } },
        });
        version_records(self.search(&self.metadata, body).await?)
    }
}

fn version_records(hits: Vec<Value>) -> Result<Vec<VersionRecord>, MetadataError> {
    hits.into_iter()
        .map(|source| {
            let doc: VersionDoc = serde_json::from_value(source)
                .map_err(|e| MetadataError::Corrupt(format!("version document: {e}")))?;
            doc.into_record()
        })
        .collect()
}

/// Runs a read (GET by id, search) up to three times while Elasticsearch is unavailable
/// (connection refused, timeout, 5xx), 100 ms then 300 ms apart. Writes are not retried here:
/// a create whose answer was lost must not be repeated blindly.
async fn retry_reads<T, F, Fut>(read: F) -> Result<T, MetadataError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, MetadataError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match read().await {
            Err(MetadataError::Unavailable(m)) if attempt < 3 => {
                tracing::debug!(error = %m, attempt, "Elasticsearch read failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn u64_in_long(what: &str, v: u64) -> Result<(), MetadataError> {
    if i64::try_from(v).is_ok() {
        Ok(())
    } else {
        Err(MetadataError::BadRequest(format!(
            "{what} {v} is out of range"
        )))
    }
}

#[async_trait]
impl MetadataStore for ElasticStore {
    fn engine(&self) -> &'static str {
        "elasticsearch"
    }

    async fn add_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<VersionRecord, MetadataError> {
        self.ready().await?;
        let head = self.read_head(name).await?;
        let first = head.as_ref().map_or(0, |h| h.doc.doc.version) + 1;
        // Each 409 means that number is taken: try the next one.
        for version in (first..).take(MAX_CREATE_ATTEMPTS as usize) {
            let rec = new.record(name.clone(), version);
            let body = serde_json::to_value(VersionDoc::from_record(&rec)?)
                .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
            let id = version_id(name.as_str(), version);
            if self
                .create_doc(&self.metadata, &id, body, self.refresh())
                .await?
            {
                self.advance_head(&rec, head).await?;
                return Ok(rec);
            }
        }
        Err(MetadataError::Unavailable(format!(
            "could not allocate a version of {name:?}: {MAX_CREATE_ATTEMPTS} conflicts in a row"
        )))
    }

    async fn get_version(
        &self,
        name: &ObjectName,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        self.ready().await?;
        match version {
            None => self.latest(name).await,
            Some(0) => Ok(None),
            Some(v) => {
                u64_in_long("version", v)?;
                self.read_version(name, v).await
            }
        }
    }

    async fn list_versions(
        &self,
        from: &VersionsFrom,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        self.ready().await?;
        let size = limit.clamp(1, 10_000);
        let body = match from {
            VersionsFrom::Name(name, after) => {
                u64_in_long("version", *after)?;
                let mut body = json!({
                    "size": size,
                    "track_total_hits": false,
                    "query": { "bool": { "filter": [{ "term": { "name": name.as_str() } }] } },
                    "sort": [{ "version": "asc" }],
                });
                if *after > 0 {
                    body["search_after"] = json!([after]);
                }
                body
            }
            VersionsFrom::All(after) => {
                let mut body = json!({
                    "size": size,
                    "track_total_hits": false,
                    "query": { "match_all": {} },
                    "sort": [{ "name": "asc" }, { "version": "asc" }],
                });
                if let Some((name, version)) = after {
                    u64_in_long("version", *version)?;
                    body["search_after"] = json!([name.as_str(), version]);
                }
                body
            }
        };
        version_records(self.search(&self.metadata, body).await?)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, MetadataError> {
        self.ready().await?;
        list_page(self, query).await
    }

    async fn list_changes(
        &self,
        prefix: &str,
        since_ns: Option<i64>,
        before: Option<&ChangeCursor>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        self.ready().await?;
        check_prefix_name(prefix)?;
        let mut filter = Vec::new();
        if !prefix.is_empty() {
            filter.push(json!({ "prefix": { "name": prefix } }));
        }
        if let Some(since) = since_ns {
            filter.push(json!({ "range": { "ctime": { "gte": since } } }));
        }
        let mut body = json!({
            "size": limit.clamp(1, 10_000),
            "track_total_hits": false,
            "query": { "bool": { "filter": filter } },
            "sort": [{ "ctime": "desc" }, { "name": "desc" }, { "version": "desc" }],
        });
        if let Some(b) = before {
            u64_in_long("version", b.version)?;
            body["search_after"] = json!([b.ctime_ns, b.name.as_str(), b.version]);
        }
        version_records(self.search(&self.metadata, body).await?)
    }

    async fn get_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError> {
        self.ready().await?;
        Ok(self
            .read_content(hash)
            .await?
            .map(|(doc, _)| doc.into_record(*hash))
            .transpose()?)
    }

    async fn put_content(&self, record: &ContentRecord) -> Result<(), MetadataError> {
        self.ready().await?;
        let body = serde_json::to_value(ContentDoc::from_record(record)?)
            .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
        // Contents are only ever read by id (realtime), so no refresh is needed.
        self.index_doc(&self.contents, &content_id(&record.hash), body, None, None)
            .await
            .map(|_| ())
    }

    async fn update_placement(
        &self,
        hash: &ContentHash,
        moves: &[PlacementMove],
    ) -> Result<bool, MetadataError> {
        self.ready().await?;
        for _ in 0..MAX_HEAD_ATTEMPTS {
            let Some((mut doc, at)) = self.read_content(hash).await? else {
                return Ok(false);
            };
            if !apply_moves(&mut doc.placement, moves) {
                return Ok(false);
            }
            let body =
                serde_json::to_value(&doc).map_err(|e| MetadataError::Corrupt(e.to_string()))?;
            // Written only if nobody changed the document since it was read; else read again.
            if self
                .index_doc(&self.contents, &content_id(hash), body, Some(at), None)
                .await?
            {
                return Ok(true);
            }
        }
        Err(MetadataError::Unavailable(format!(
            "content {hash} kept changing; gave up after {MAX_HEAD_ATTEMPTS} attempts"
        )))
    }

    async fn touch_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError> {
        self.ready().await?;
        for _ in 0..MAX_HEAD_ATTEMPTS {
            let Some((mut doc, at)) = self.read_content(hash).await? else {
                return Ok(None);
            };
            doc.touched = dos_protocol::now_ns();
            let body =
                serde_json::to_value(&doc).map_err(|e| MetadataError::Corrupt(e.to_string()))?;
            if self
                .index_doc(&self.contents, &content_id(hash), body, Some(at), None)
                .await?
            {
                return doc.into_record(*hash).map(Some);
            }
        }
        Err(MetadataError::Unavailable(format!(
            "content {hash} kept changing; gave up after {MAX_HEAD_ATTEMPTS} attempts"
        )))
    }

    async fn list_contents(
        &self,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<ContentRecord>, MetadataError> {
        self.ready().await?;
        let mut body = json!({
            "size": limit.clamp(1, 10_000),
            "track_total_hits": false,
            "query": { "match_all": {} },
            "sort": [{ "hash": "asc" }],
        });
        if let Some(after) = after {
            body["search_after"] = json!([after.to_base64()]);
        }
        let hits = self.search(&self.contents, body).await?;
        hits.into_iter()
            .map(|source| {
                let doc: ContentDoc = serde_json::from_value(source)
                    .map_err(|e| MetadataError::Corrupt(format!("content document: {e}")))?;
                let hash = ContentHash::from_base64(&doc.hash).map_err(|_| {
                    MetadataError::Corrupt(format!("content document hash {:?}", doc.hash))
                })?;
                doc.into_record(hash)
            })
            .collect()
    }

    async fn delete_version(&self, name: &ObjectName, version: u64) -> Result<bool, MetadataError> {
        self.ready().await?;
        if i64::try_from(version).is_err() {
            return Ok(false);
        }
        // Versions only ever grow, so one that is older than the latest stays older.
        match self.latest(name).await? {
            Some(latest) if latest.version > version => {}
            _ => return Ok(false),
        }
        self.delete_doc(&self.metadata, &version_id(name.as_str(), version), None)
            .await
    }

    async fn delete_unused_content(
        &self,
        hash: &ContentHash,
        unused_since_ns: i64,
    ) -> Result<bool, MetadataError> {
        self.ready().await?;
        let Some((doc, at)) = self.read_content(hash).await? else {
            return Ok(false);
        };
        if doc.touched >= unused_since_ns {
            return Ok(false);
        }
        let referenced = self
            .search(
                &self.metadata,
                json!({
                    "size": 1,
                    "track_total_hits": false,
                    "query": { "bool": { "filter": [{ "term": { "hash": hash.to_base64() } }] } },
                }),
            )
            .await?;
        if !referenced.is_empty() {
            return Ok(false);
        }
        // Only if nobody touched or rewrote it since it was read: a dedup write that touched
        // it in between keeps it.
        self.delete_doc(&self.contents, &content_id(hash), Some(at))
            .await
    }
}

/// One listing page over the live heads, grouping by the delimiter: the same walk as the SQLite
/// engine's, each step one search. A common prefix is skipped with one range search, so a page
/// costs O(page) searches however many names a prefix hides.
async fn list_page(store: &ElasticStore, query: &ListQuery) -> Result<ListPage, MetadataError> {
    let mut builder = PageBuilder::new(query)?;
    let mut at_rows = AtRows::default();
    loop {
        let batch = builder.batch();
        let rows = match query.at {
            None => {
                store
                    .search_heads(query.prefix.as_str(), builder.start(), batch)
                    .await?
            }
            Some(at) => {
                store
                    .search_versions_at(query.prefix.as_str(), builder.start(), at, batch)
                    .await?
            }
        };
        let exhausted = rows.len() < batch;
        let mut jumped = false;
        for rec in rows {
            let step = if query.at.is_some() {
                at_rows.offer(&mut builder, rec)
            } else {
                builder.offer(rec)
            };
            match step {
                Step::Next => {}
                Step::Jump => {
                    jumped = true;
                    break;
                }
                Step::Done => return Ok(builder.finish()),
            }
        }
        if exhausted && !jumped {
            return Ok(builder.finish());
        }
    }
}

/// A prefix of names is a name's beginning: at most [`dos_protocol::MAX_NAME_BYTES`].
fn check_prefix_name(prefix: &str) -> Result<(), MetadataError> {
    if prefix.len() > dos_protocol::MAX_NAME_BYTES {
        return Err(MetadataError::BadRequest("prefix too long".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let (u, c) = parse_url("localhost:9200").unwrap();
        assert_eq!(u.as_str(), "http://localhost:9200/");
        assert!(c.is_none());
        let (u, c) = parse_url("https://el%40stic:p%3Ass@es.example:9243/base").unwrap();
        assert_eq!(u.as_str(), "https://es.example:9243/base");
        match c {
            Some(Credentials::Basic(user, pass)) => {
                assert_eq!(user, "el@stic");
                assert_eq!(pass, "p:ss");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_url("ftp://x:1").is_err());
        assert!(parse_url("http://x:9200/?q=name:a").is_err());
    }

    #[test]
    fn prefixes() {
        check_prefix("").unwrap();
        check_prefix("dostest-1.2_x-").unwrap();
        for bad in ["Upper", "-a", "_a", ".a", "a b", "a*", "a/b", "a:b"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
