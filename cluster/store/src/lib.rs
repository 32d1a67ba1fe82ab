//! What a client of the store needs of it: the [`ObjectStore`] trait.
//!
//! dosfs is written against this trait only. Its implementations:
//!
//! - over HTTP (`dos_client::Client`): a remote cluster, through any API server's REST API;
//! - in process (`dos_api_server::InProcessStore`): the embedded default, where dosfs calls the
//!   API server's core directly (no HTTP, no serialisation of bodies) while the REST listener
//!   still serves curl and other clients on the same store;
//! - in memory ([`memory::MemoryStore`], feature `test-util`), with [`faults::FaultyStore`]
//!   to inject failures and delays into any implementation.
//!
//! Every implementation passes the same [`contract`] suite (feature `test-util`), so a test of
//! the filesystem core against the memory store says something about the real ones.
//!
//! Failures are [`StoreError`]s: typed kinds a caller can branch on (not found, digest
//! mismatch, busy, unavailable, transport …), each with a one-line message that names no
//! internal detail of the store (no data-server address, no file path).

#[cfg(feature = "test-util")]
pub mod contract;
#[cfg(feature = "test-util")]
pub mod faults;
#[cfg(feature = "test-util")]
pub mod memory;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use dos_protocol::{
    ByteRange, CheckReport, ContentHash, ListPage, ListQuery, ObjectName, Redundancy,
    VersionRecord, WriteAttributes, now_ns,
};
use futures::{Stream, StreamExt, TryStreamExt};

/// Everything that can go wrong asking the store for something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such name, version or upload.
    #[error("{0}")]
    NotFound(String),
    /// A request the store refuses as malformed (bad name, size or range).
    #[error("{0}")]
    Invalid(String),
    /// The bytes sent do not hash to the digest they were announced with; nothing was stored.
    #[error("the bytes do not match their SHA-256; nothing was stored")]
    DigestMismatch,
    /// A resumable upload was continued from another offset than the one it accepted.
    #[error("upload offset {offset} does not match the {accepted} bytes accepted so far")]
    OffsetMismatch { offset: u64, accepted: u64 },
    /// The upload is too old to continue.
    #[error("the upload has expired")]
    Expired,
    /// Missing or wrong credentials.
    #[error("access denied: {0}")]
    Denied(String),
    /// Refused because of a conflicting operation in progress.
    #[error("{0}")]
    Conflict(String),
    /// What was read changed underneath the reader: a pinned version answers other content.
    #[error("{0}")]
    Changed(String),
    /// The store is overloaded; the same request may succeed in a moment.
    #[error("{0}")]
    Busy(String),
    /// The store cannot do this now (too few data servers, metadata unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The connection to the store failed, or broke off in the middle of an answer.
    #[error("{0}")]
    Transport(String),
    /// An answer that breaks the protocol, or bytes that fail their size or hash check.
    #[error("{0}")]
    Integrity(String),
    /// The store failed for a reason of its own.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }

    /// Whether the same request may succeed if repeated later (the store or the network was
    /// at fault, not the request).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Busy(_)
                | StoreError::Unavailable(_)
                | StoreError::Timeout(_)
                | StoreError::Transport(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Bytes coming from the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = StoreResult<Bytes>> + Send>>;
/// Bytes going to the store.
pub type UploadBody = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;
/// Version records, in order.
pub type RecordStream = Pin<Box<dyn Stream<Item = StoreResult<VersionRecord>> + Send>>;

/// The changes made to a store, as they happen (see [`ObjectStore::changes`]).
pub type ChangeStream = Pin<Box<dyn Stream<Item = dos_protocol::ChangeEvent> + Send>>;

/// The content a write sends: its SHA-256 and size, known before the first byte (the store
/// checks both and stores nothing on a mismatch), and the bytes.
pub struct Content {
    pub hash: ContentHash,
    pub size: u64,
    pub body: UploadBody,
}

impl Content {
    /// Content held in memory (hashed here).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            hash: ContentHash::of(&bytes),
            size: bytes.len() as u64,
            body: once(bytes),
        }
    }

    /// Content of a known hash and size, streamed from `body`.
    pub fn stream(
        hash: ContentHash,
        size: u64,
        body: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Self {
            hash,
            size,
            body: Box::pin(body),
        }
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A body of one chunk.
pub fn once(bytes: Bytes) -> UploadBody {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}

/// An answer to a read: the version read, the bytes of the object the body carries (`None`:
/// all of it) and the body.
///
/// The body yields exactly those bytes or ends with an error: never wrong or truncated bytes
/// presented as a complete answer.
pub struct ObjectRead {
    pub record: VersionRecord,
    pub range: Option<ByteRange>,
    pub body: ByteStream,
}

impl std::fmt::Debug for ObjectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRead")
            .field("record", &self.record)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl ObjectRead {
    /// Number of bytes the body carries.
    pub fn len(&self) -> u64 {
        self.range.map_or(self.record.size, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body in memory (for small objects: symlink targets, tests).
    pub async fn bytes(mut self) -> StoreResult<Bytes> {
        let mut out = BytesMut::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        while let Some(chunk) = self.body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }
}

/// The answer to [`ObjectStore::post`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// The content is stored already: this version was made, no bytes need to be sent.
    Stored(VersionRecord),
    /// Send the bytes to this resumable upload.
    Upload(UploadId),
}

/// A resumable upload, as the store names it (opaque to the client).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(pub String);

/// The answer to [`ObjectStore::stream_upload`]: every byte arrived; `upload` now names the
/// received content, which [`ObjectStore::finish_upload`] makes a version of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub upload: UploadId,
    /// SHA-256 of what the store received.
    pub hash: ContentHash,
    pub size: u64,
}

/// The answer to one [`ObjectStore::upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadProgress {
    /// More bytes are expected; `accepted` are kept (whole 1 MiB blocks).
    Partial { accepted: u64 },
    /// The last byte arrived, the SHA-256 matched and this version was made.
    Done(VersionRecord),
}

/// What a client needs of the store. Names are validated [`ObjectName`]s; a version is the
/// latest when `None`.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The version of `name` (latest when `None`). A delete marker is [`StoreError::NotFound`].
    async fn head(&self, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord>;

    /// The bytes of a version, or of `range` of it, streamed. A range past the end is
    /// [`StoreError::Invalid`]; one that covers the whole object answers the whole object
    /// (`range: None`).
    async fn get(
        &self,
        name: &ObjectName,
        version: Option<u64>,
        range: Option<ByteRange>,
    ) -> StoreResult<ObjectRead>;

    /// Stores `content` as the next version of `name`, returning once it is durable.
    async fn put(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        content: Content,
    ) -> StoreResult<VersionRecord>;

    /// Makes a version of content the store already has (no bytes sent), or opens a
    /// resumable upload for it.
    async fn post(
        &self,
        name: &ObjectName,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
    ) -> StoreResult<PostOutcome>;

    /// Sends `len` bytes of an upload, from byte `offset` (which must be what the upload has
    /// accepted).
    async fn upload(
        &self,
        upload: &UploadId,
        offset: u64,
        len: u64,
        body: UploadBody,
    ) -> StoreResult<UploadProgress>;

    /// Bytes an upload has accepted so far.
    async fn upload_status(&self, upload: &UploadId) -> StoreResult<u64>;

    /// Opens an upload of content whose hash and size are not known yet (a file being
    /// written): [`stream_upload`](Self::stream_upload) sends all of it in one body, then
    /// [`finish_upload`](Self::finish_upload) makes the version.
    async fn open_upload(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
    ) -> StoreResult<UploadId>;

    /// Sends the whole content of an open upload, from its first byte, in one body; the
    /// store hashes and keeps it as it arrives but makes no version. An error in `body`
    /// abandons the upload.
    async fn stream_upload(&self, upload: &UploadId, body: UploadBody) -> StoreResult<Received>;

    /// Makes the version of a received upload once `hash` (the sender's own digest of what
    /// it sent) matches what the store received; returns once it is durable. The mode and
    /// mtime of `attrs` replace those given at open.
    async fn finish_upload(
        &self,
        upload: &UploadId,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> StoreResult<VersionRecord>;

    /// Adds a delete marker; [`StoreError::NotFound`] when there is nothing to delete.
    async fn delete(&self, name: &ObjectName) -> StoreResult<VersionRecord>;

    /// Every version of `name`, ascending, delete markers included; empty for an unknown name.
    async fn versions(&self, name: &ObjectName) -> StoreResult<RecordStream>;

    /// One page of the latest live versions under a prefix, grouped by a delimiter.
    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage>;

    /// The changes anyone makes to the store from now on, as they happen: what a mount
    /// follows to keep its caches coherent. The stream ends when the store can no longer
    /// tell (a lost connection; follow again). A store that cannot tell at all (the
    /// default) never yields one, and its readers rely on their attribute TTL.
    async fn changes(&self) -> StoreResult<ChangeStream> {
        Ok(Box::pin(futures::stream::pending()))
    }

    /// How many of the shards of content `hash` answer healthy where they are recorded: a
    /// cheap check (no shard is read whole). Damage found queues a repair.
    async fn redundancy(&self, hash: &ContentHash) -> StoreResult<Redundancy>;

    /// Verifies content `hash` in full (every shard read whole and checked, bad ones
    /// rebuilt, the decoded bytes against the SHA-256) and says what it found and did.
    async fn check(&self, hash: &ContentHash) -> StoreResult<CheckReport>;

    /// Makes version `version` of `name` its latest again: a new version with that content,
    /// mode and owner, dated now. No bytes move.
    async fn restore(&self, name: &ObjectName, version: u64) -> StoreResult<VersionRecord> {
        let old = self.head(name, Some(version)).await?;
        let hash = old.hash.ok_or_else(|| {
            StoreError::NotFound(format!("{name} version {version} is a delete marker"))
        })?;
        let attrs = WriteAttributes {
            kind: old.kind,
            mode: Some(old.mode),
            mtime_ns: Some(now_ns()),
            supersedes: None,
            posix: old.posix,
        };
        match self.post(name, hash, old.size, &attrs).await? {
            PostOutcome::Stored(rec) => Ok(rec),
            PostOutcome::Upload(_) => Err(StoreError::NotFound(format!(
                "the content of {name} version {version} is no longer stored"
            ))),
        }
    }

    /// Stores `bytes` as the next version of `name`.
    async fn put_bytes(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        bytes: Bytes,
    ) -> StoreResult<VersionRecord> {
        self.put(name, attrs, Content::from_bytes(bytes)).await
    }

    /// Every version of `name`, in memory.
    async fn all_versions(&self, name: &ObjectName) -> StoreResult<Vec<VersionRecord>> {
        self.versions(name).await?.try_collect().await
    }

    /// Every page of a listing: (entries, common prefixes).
    async fn list_all(
        &self,
        prefix: &str,
        delimiter: Option<char>,
    ) -> StoreResult<(Vec<VersionRecord>, Vec<String>)> {
        let mut query = ListQuery {
            prefix: prefix.to_string(),
            delimiter,
            cursor: None,
            limit: 1000,
            at: None,
        };
        let (mut entries, mut prefixes) = (Vec::new(), Vec::new());
        loop {
            let page = self.list(&query).await?;
            entries.extend(page.entries);
            prefixes.extend(page.prefixes);
            match page.next_cursor {
                Some(next) if query.cursor.as_deref() == Some(next.as_str()) => {
                    return Err(StoreError::Integrity(
                        "listing cursor did not advance".into(),
                    ));
                }
                Some(next) => query.cursor = Some(next),
                None => return Ok((entries, prefixes)),
            }
        }
    }
}

/// A shared store is a store (so wrappers such as the fault injector take `Arc<dyn …>`).
#[async_trait]
impl<T: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<T> {
    async fn head(&self, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord> {
        (**self).head(name, version).await
    }

    async fn get(
        &self,
        name: &ObjectName,
        version: Option<u64>,
        range: Option<ByteRange>,
    ) -> StoreResult<ObjectRead> {
        (**self).get(name, version, range).await
    }

    async fn put(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        content: Content,
    ) -> StoreResult<VersionRecord> {
        (**self).put(name, attrs, content).await
    }

    async fn post(
        &self,
        name: &ObjectName,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
    ) -> StoreResult<PostOutcome> {
        (**self).post(name, hash, size, attrs).await
    }

    async fn upload(
        &self,
        upload: &UploadId,
        offset: u64,
        len: u64,
        body: UploadBody,
    ) -> StoreResult<UploadProgress> {
        (**self).upload(upload, offset, len, body).await
    }

    async fn upload_status(&self, upload: &UploadId) -> StoreResult<u64> {
        (**self).upload_status(upload).await
    }

    async fn redundancy(&self, hash: &ContentHash) -> StoreResult<Redundancy> {
        (**self).redundancy(hash).await
    }

    async fn check(&self, hash: &ContentHash) -> StoreResult<CheckReport> {
        (**self).check(hash).await
    }

    async fn open_upload(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
    ) -> StoreResult<UploadId> {
        (**self).open_upload(name, attrs).await
    }

    async fn stream_upload(&self, upload: &UploadId, body: UploadBody) -> StoreResult<Received> {
        (**self).stream_upload(upload, body).await
    }

    async fn finish_upload(
        &self,
        upload: &UploadId,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> StoreResult<VersionRecord> {
        (**self).finish_upload(upload, hash, attrs).await
    }

    async fn delete(&self, name: &ObjectName) -> StoreResult<VersionRecord> {
        (**self).delete(name).await
    }

    async fn versions(&self, name: &ObjectName) -> StoreResult<RecordStream> {
        (**self).versions(name).await
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        (**self).list(query).await
    }

    async fn changes(&self) -> StoreResult<ChangeStream> {
        (**self).changes().await
    }

    async fn restore(&self, name: &ObjectName, version: u64) -> StoreResult<VersionRecord> {
        (**self).restore(name, version).await
    }
}
