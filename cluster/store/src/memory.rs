//! An [`ObjectStore`] in memory, for tests: versions, delete markers, dedup by content hash,
//! resumable uploads and listings behave as the real store's (the [`contract`](crate::contract)
//! suite checks that), with no disk, network or erasure coding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use dos_protocol::{
    BLOCK_SIZE, ByteRange, ContentHash, ListPage, ListQuery, ObjectName, PosixAttrs, VersionRecord,
    WriteAttributes, now_ns,
};
use futures::StreamExt;

use crate::{
    Content, ObjectRead, ObjectStore, PostOutcome, Received, RecordStream, StoreError, StoreResult,
    UploadBody, UploadId, UploadProgress,
};

/// Bytes a chunk of a read body carries at most, so that readers see several chunks.
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct State {
    versions: BTreeMap<ObjectName, Vec<VersionRecord>>,
    contents: HashMap<ContentHash, Bytes>,
    uploads: HashMap<String, Upload>,
    next_upload: u64,
    /// Followers of changes (made at the first [`ObjectStore::changes`]).
    changes: Option<tokio::sync::broadcast::Sender<dos_protocol::ChangeEvent>>,
}

struct Upload {
    name: ObjectName,
    hash: ContentHash,
    size: u64,
    attrs: WriteAttributes,
    received: BytesMut,
    stage: Stage,
}

/// Like the real store's tokens: declared content, an open stream, or a stream received.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Declared,
    Open,
    Received,
}

/// The in-memory store. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of distinct contents stored (dedup makes it less than the versions).
    pub fn content_count(&self) -> usize {
        self.state().contents.len()
    }
}

fn add_version(
    state: &mut State,
    name: &ObjectName,
    hash: Option<ContentHash>,
    size: u64,
    attrs: &WriteAttributes,
) -> VersionRecord {
    let list = state.versions.entry(name.clone()).or_default();
    let rec = VersionRecord {
        name: name.clone(),
        version: list.last().map_or(1, |v| v.version + 1),
        size,
        hash,
        mtime_ns: attrs.mtime_ns.unwrap_or_else(now_ns),
        mode: if hash.is_some() {
            attrs.mode.unwrap_or_else(|| attrs.kind.default_mode())
        } else {
            0
        },
        kind: attrs.kind,
        posix: if hash.is_some() {
            attrs.posix
        } else {
            PosixAttrs::default()
        },
        ctime_ns: now_ns(),
    };
    // The version right before, with the same content, gives way (like the real store).
    if let Some(old) = attrs.supersedes
        && old + 1 == rec.version
        && hash.is_some()
        && list
            .last()
            .is_some_and(|l| l.version == old && l.hash == hash)
    {
        list.pop();
    }
    list.push(rec.clone());
    if let Some(tx) = &state.changes {
        let _ = tx.send(dos_protocol::ChangeEvent::Changed(
            dos_protocol::Change::of(&rec),
        ));
    }
    rec
}

fn resolve(state: &State, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord> {
    let list = state.versions.get(name);
    let rec = match version {
        None => list.and_then(|l| l.last()),
        Some(v) => list.and_then(|l| l.iter().find(|r| r.version == v)),
    };
    match (rec, version) {
        (Some(r), _) if r.hash.is_some() => Ok(r.clone()),
        (Some(r), _) => Err(StoreError::NotFound(format!(
            "{name} version {} is a delete marker",
            r.version
        ))),
        (None, Some(v)) => Err(StoreError::NotFound(format!("{name} has no version {v}"))),
        (None, None) => Err(StoreError::NotFound(format!("no object named {name}"))),
    }
}

async fn collect(mut body: UploadBody, limit: u64) -> StoreResult<Bytes> {
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StoreError::Transport(format!("reading the body: {e}")))?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(StoreError::Invalid(format!(
                "the body goes past the declared size of {limit} bytes"
            )));
        }
    }
    Ok(out.freeze())
}

fn chunked(bytes: Bytes) -> crate::ByteStream {
    let chunks: Vec<StoreResult<Bytes>> = (0..bytes.len())
        .step_by(CHUNK)
        .map(|i| Ok(bytes.slice(i..(i + CHUNK).min(bytes.len()))))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head(&self, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord> {
        resolve(&self.state(), name, version)
    }

    async fn get(
        &self,
        name: &ObjectName,
        version: Option<u64>,
        range: Option<ByteRange>,
    ) -> StoreResult<ObjectRead> {
        let (record, bytes) = {
            let state = self.state();
            let record = resolve(&state, name, version)?;
            let hash = record
                .hash
                .ok_or_else(|| StoreError::Internal("no hash".into()))?;
            let bytes = state
                .contents
                .get(&hash)
                .cloned()
                .ok_or_else(|| StoreError::Internal(format!("content {hash} is missing")))?;
            (record, bytes)
        };
        let range = match range {
            None => None,
            Some(r) => r
                .within(record.size)
                .map_err(|_| StoreError::Invalid("range not satisfiable".into()))?,
        };
        let body = match range {
            None => bytes,
            Some(r) => bytes.slice(r.start as usize..=r.end as usize),
        };
        Ok(ObjectRead {
            record,
            range,
            body: chunked(body),
        })
    }

    async fn put(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        content: Content,
    ) -> StoreResult<VersionRecord> {
        let bytes = collect(content.body, content.size).await?;
        if bytes.len() as u64 != content.size || ContentHash::of(&bytes) != content.hash {
            return Err(StoreError::DigestMismatch);
        }
        let mut state = self.state();
        state.contents.entry(content.hash).or_insert(bytes);
        Ok(add_version(
            &mut state,
            name,
            Some(content.hash),
            content.size,
            attrs,
        ))
    }

    async fn post(
        &self,
        name: &ObjectName,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
    ) -> StoreResult<PostOutcome> {
        let mut state = self.state();
        if let Some(stored) = state.contents.get(&hash) {
            if stored.len() as u64 != size {
                return Err(StoreError::Invalid(format!(
                    "size {size} does not match the stored content of this digest ({} bytes)",
                    stored.len()
                )));
            }
            return Ok(PostOutcome::Stored(add_version(
                &mut state,
                name,
                Some(hash),
                size,
                attrs,
            )));
        }
        state.next_upload += 1;
        let id = format!("mem-{}", state.next_upload);
        state.uploads.insert(
            id.clone(),
            Upload {
                name: name.clone(),
                hash,
                size,
                attrs: *attrs,
                received: BytesMut::new(),
                stage: Stage::Declared,
            },
        );
        Ok(PostOutcome::Upload(UploadId(id)))
    }

    async fn upload(
        &self,
        upload: &UploadId,
        offset: u64,
        len: u64,
        body: UploadBody,
    ) -> StoreResult<UploadProgress> {
        let (accepted, size) = {
            let state = self.state();
            let u = state
                .uploads
                .get(&upload.0)
                .ok_or_else(|| StoreError::NotFound("no such upload".into()))?;
            if u.stage != Stage::Declared {
                return Err(StoreError::Invalid(
                    "a streamed upload is sent by stream_upload".into(),
                ));
            }
            (u.received.len() as u64, u.size)
        };
        if offset != accepted {
            return Err(StoreError::OffsetMismatch { offset, accepted });
        }
        if offset + len > size {
            return Err(StoreError::Invalid(format!(
                "bytes {offset}+ go past the declared size of {size} bytes"
            )));
        }
        let bytes = collect(body, len).await?;
        let mut state = self.state();
        let Some(u) = state.uploads.get_mut(&upload.0) else {
            return Err(StoreError::NotFound("no such upload".into()));
        };
        if u.received.len() as u64 != offset {
            return Err(StoreError::OffsetMismatch {
                offset,
                accepted: u.received.len() as u64,
            });
        }
        u.received.extend_from_slice(&bytes);
        let got = u.received.len() as u64;
        if got < u.size {
            // Like the real store: whole blocks are kept, a partial one is dropped.
            let keep = got / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
            u.received.truncate(keep as usize);
            return Ok(UploadProgress::Partial { accepted: keep });
        }
        let Some(u) = state.uploads.remove(&upload.0) else {
            return Err(StoreError::NotFound("no such upload".into()));
        };
        let bytes = u.received.freeze();
        if ContentHash::of(&bytes) != u.hash {
            return Err(StoreError::DigestMismatch);
        }
        state.contents.entry(u.hash).or_insert(bytes);
        Ok(UploadProgress::Done(add_version(
            &mut state,
            &u.name,
            Some(u.hash),
            u.size,
            &u.attrs,
        )))
    }

    async fn open_upload(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
    ) -> StoreResult<UploadId> {
        let mut state = self.state();
        state.next_upload += 1;
        let id = format!("mem-{}", state.next_upload);
        state.uploads.insert(
            id.clone(),
            Upload {
                name: name.clone(),
                hash: ContentHash([0; 32]),
                size: 0,
                attrs: *attrs,
                received: BytesMut::new(),
                stage: Stage::Open,
            },
        );
        Ok(UploadId(id))
    }

    async fn stream_upload(&self, upload: &UploadId, body: UploadBody) -> StoreResult<Received> {
        match self.state().uploads.get(&upload.0) {
            Some(u) if u.stage == Stage::Open => {}
            Some(_) => {
                return Err(StoreError::Invalid(
                    "only an open upload takes a streamed body".into(),
                ));
            }
            None => return Err(StoreError::NotFound("no such upload".into())),
        }
        let bytes = match collect(body, u64::MAX).await {
            Ok(b) => b,
            Err(e) => {
                // Like the real store: a failed stream abandons the upload.
                self.state().uploads.remove(&upload.0);
                return Err(e);
            }
        };
        let mut state = self.state();
        let u = state
            .uploads
            .get_mut(&upload.0)
            .ok_or_else(|| StoreError::NotFound("no such upload".into()))?;
        u.hash = ContentHash::of(&bytes);
        u.size = bytes.len() as u64;
        u.received = BytesMut::from(&bytes[..]);
        u.stage = Stage::Received;
        Ok(Received {
            upload: upload.clone(),
            hash: u.hash,
            size: u.size,
        })
    }

    async fn finish_upload(
        &self,
        upload: &UploadId,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> StoreResult<VersionRecord> {
        let mut state = self.state();
        match state.uploads.get(&upload.0) {
            Some(u) if u.stage == Stage::Received => {}
            Some(_) => {
                return Err(StoreError::Invalid(
                    "only a received stream is finished".into(),
                ));
            }
            None => return Err(StoreError::NotFound("no such upload".into())),
        }
        let Some(u) = state.uploads.remove(&upload.0) else {
            return Err(StoreError::NotFound("no such upload".into()));
        };
        if hash != u.hash {
            return Err(StoreError::DigestMismatch);
        }
        let attrs = WriteAttributes {
            mode: attrs.mode.or(u.attrs.mode),
            mtime_ns: attrs.mtime_ns.or(u.attrs.mtime_ns),
            posix: attrs.posix.or(u.attrs.posix),
            ..u.attrs
        };
        state.contents.entry(u.hash).or_insert(u.received.freeze());
        Ok(add_version(
            &mut state,
            &u.name,
            Some(u.hash),
            u.size,
            &attrs,
        ))
    }

    async fn upload_status(&self, upload: &UploadId) -> StoreResult<u64> {
        self.state()
            .uploads
            .get(&upload.0)
            .map(|u| u.received.len() as u64)
            .ok_or_else(|| StoreError::NotFound("no such upload".into()))
    }

    async fn delete(&self, name: &ObjectName) -> StoreResult<VersionRecord> {
        let mut state = self.state();
        match state.versions.get(name).and_then(|l| l.last()) {
            None => return Err(StoreError::NotFound(format!("no object named {name}"))),
            Some(v) if v.hash.is_none() => {
                return Err(StoreError::NotFound(format!("{name} is already deleted")));
            }
            Some(_) => {}
        }
        Ok(add_version(
            &mut state,
            name,
            None,
            0,
            &WriteAttributes::default(),
        ))
    }

    /// Memory keeps each content whole, once: it is all there or not at all.
    async fn redundancy(&self, hash: &ContentHash) -> StoreResult<dos_protocol::Redundancy> {
        if !self.state().contents.contains_key(hash) {
            return Err(StoreError::NotFound(format!(
                "no content {}",
                hash.to_hex()
            )));
        }
        let total = dos_protocol::TOTAL_SHARDS as u8;
        Ok(dos_protocol::Redundancy {
            healthy: total,
            total,
            repair_queued: false,
        })
    }

    async fn check(&self, hash: &ContentHash) -> StoreResult<dos_protocol::CheckReport> {
        let bytes = self
            .state()
            .contents
            .get(hash)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("no content {}", hash.to_hex())))?;
        Ok(dos_protocol::CheckReport {
            size: bytes.len() as u64,
            shards_verified: dos_protocol::TOTAL_SHARDS as u8,
            sha256_ok: ContentHash::of(&bytes) == *hash,
            ..Default::default()
        })
    }

    async fn versions(&self, name: &ObjectName) -> StoreResult<RecordStream> {
        let list = self.state().versions.get(name).cloned().unwrap_or_default();
        Ok(Box::pin(futures::stream::iter(list.into_iter().map(Ok))))
    }

    async fn changes(&self) -> StoreResult<crate::ChangeStream> {
        let rx = self
            .state()
            .changes
            .get_or_insert_with(|| tokio::sync::broadcast::channel(4096).0)
            .subscribe();
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            use tokio::sync::broadcast::error::RecvError;
            match rx.recv().await {
                Ok(e) => Some((e, rx)),
                Err(RecvError::Lagged(_)) => Some((dos_protocol::ChangeEvent::Missed, rx)),
                Err(RecvError::Closed) => None,
            }
        })))
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        if !(1..=10_000).contains(&query.limit) {
            return Err(StoreError::Invalid("limit must be 1 to 10000".into()));
        }
        let state = self.state();
        let live = state.versions.iter().filter_map(|(name, list)| {
            // The newest version made by the listing's moment, or the latest.
            match query.at {
                Some(at) => list.iter().rev().find(|r| r.ctime_ns <= at),
                None => list.last(),
            }
            .filter(|r| r.hash.is_some())
            .map(|r| (name.as_str(), r))
        });
        Ok(page(live, query))
    }
}

/// One listing page over live names in ascending order, as the metadata engines build it:
/// names containing the delimiter after the prefix are grouped into one prefix; entries and
/// prefixes together fill at most `limit`; the cursor is the last key of the page.
fn page<'a>(
    live: impl Iterator<Item = (&'a str, &'a VersionRecord)>,
    query: &ListQuery,
) -> ListPage {
    let prefix = query.prefix.as_str();
    let mut out = ListPage::default();
    let mut last_key: Option<String> = None;
    let mut count = 0;
    for (name, rec) in live {
        if !name.starts_with(prefix) {
            continue;
        }
        let key = match query.delimiter {
            Some(d) => match name[prefix.len()..].find(d) {
                Some(i) => name[..prefix.len() + i + d.len_utf8()].to_string(),
                None => name.to_string(),
            },
            None => name.to_string(),
        };
        if let Some(c) = &query.cursor
            && key.as_str() <= c.as_str()
        {
            continue;
        }
        if last_key.as_deref() == Some(key.as_str()) {
            continue;
        }
        if count == query.limit {
            out.next_cursor = last_key;
            return out;
        }
        if key == name {
            out.entries.push(rec.clone());
        } else {
            out.prefixes.push(key.clone());
        }
        last_key = Some(key);
        count += 1;
    }
    out
}
