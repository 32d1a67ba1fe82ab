//! Object-version metadata: which versions a name has, what content each refers to, and where
//! the shards of each content hash were placed.
//!
//! [`MetadataStore`] is the one trait; [`sqlite::SqliteStore`] is the embedded engine used by
//! `dos-server local` and by a single API server without Elasticsearch;
//! [`elastic::ElasticStore`] is the Elasticsearch engine of a cluster. Every engine passes the
//! same contract tests ([`contract`]).

#[cfg(any(test, feature = "test-util"))]
pub mod contract;
pub mod elastic;
mod listing;
pub mod sqlite;
pub mod timed;

use async_trait::async_trait;
pub use dos_protocol::ListQuery;
use dos_protocol::{
    BlockHashes, ChangeCursor, ContentHash, EntryKind, ListPage, ObjectName, PosixAttrs, ServerId,
    VersionRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The engine cannot be reached or failed; the request may be retried later (503).
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be understood.
    #[error("metadata store holds a malformed record: {0}")]
    Corrupt(String),
    #[error("invalid listing request: {0}")]
    BadRequest(String),
}

/// A version about to be written. `hash: None` makes a delete marker (size must be 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub size: u64,
    pub hash: Option<ContentHash>,
    pub mtime_ns: i64,
    pub mode: u32,
    pub kind: EntryKind,
    /// Owner, group, device number, access time.
    pub posix: PosixAttrs,
    /// When the version is made (its ctime).
    pub ctime_ns: i64,
}

impl NewVersion {
    pub fn delete_marker(mtime_ns: i64) -> Self {
        Self {
            size: 0,
            hash: None,
            mtime_ns,
            mode: 0,
            kind: EntryKind::File,
            posix: PosixAttrs::default(),
            ctime_ns: mtime_ns,
        }
    }

    /// The record of this version once it is version `version` of `name`.
    pub fn record(&self, name: ObjectName, version: u64) -> VersionRecord {
        VersionRecord {
            name,
            version,
            size: self.size,
            hash: self.hash,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            kind: self.kind,
            posix: self.posix,
            ctime_ns: self.ctime_ns,
        }
    }
}

/// What the store knows about one content hash: its size, which data server holds each of
/// its six shards (index = shard index), and the hash of each of its blocks, which every read
/// checks (see [`BlockHashes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRecord {
    pub hash: ContentHash,
    pub size: u64,
    pub placement: Vec<ServerId>,
    pub blocks: BlockHashes,
}

/// One change to a content's placement: shard `shard` now lives on `to`, if its slot still
/// names `from` (what the caller read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementMove {
    pub shard: u8,
    pub from: ServerId,
    pub to: ServerId,
}

/// Where a `/versions` page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionsFrom {
    /// Versions of one name, after this version number (0 = from the first).
    Name(ObjectName, u64),
    /// Every version of every name, in (name, version) order, after this position.
    All(Option<(ObjectName, u64)>),
}

/// The metadata engine. Engines must make [`add_version`](Self::add_version) allocate the
/// next number of a name atomically (1, 2, 3 … with no gap and no duplicate under concurrent
/// writers) and make every successful write visible to the next read.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The engine's name, for metrics (`sqlite`, `elasticsearch`).
    fn engine(&self) -> &'static str {
        "other"
    }

    /// Appends the next version of `name`.
    async fn add_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<VersionRecord, MetadataError>;

    /// Records new content and the version that refers to it: for an engine with
    /// transactions one atomic write (one commit for a new object), else the record first,
    /// then the version.
    async fn add_version_with_content(
        &self,
        name: &ObjectName,
        new: NewVersion,
        content: &ContentRecord,
    ) -> Result<VersionRecord, MetadataError> {
        self.put_content(content).await?;
        self.add_version(name, new).await
    }

    /// A version of content already stored (`new.hash`): marks the content used now (as
    /// [`touch_content`](Self::touch_content)) and adds the version, in one transaction for
    /// an engine with them. `Ok(None)`, and no version, when the content record is gone.
    async fn add_known_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        let Some(hash) = new.hash else {
            return Ok(None);
        };
        if self.touch_content(&hash).await?.is_none() {
            return Ok(None);
        }
        self.add_version(name, new).await.map(Some)
    }

    /// Version `version` of `name`, or its latest version (which may be a delete marker).
    async fn get_version(
        &self,
        name: &ObjectName,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, MetadataError>;

    /// Up to `limit` versions in ascending (name, version) order.
    async fn list_versions(
        &self,
        from: &VersionsFrom,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError>;

    /// One page of latest live versions and common prefixes (as they were at
    /// [`ListQuery::at`] when it is set).
    async fn list(&self, query: &ListQuery) -> Result<ListPage, MetadataError>;

    /// Up to `limit` versions (delete markers included) of names starting with `prefix`
    /// made at or after `since_ns` (by their ctime), newest first: by ctime, then name and
    /// version, descending; only those after `before` in that order when it is given.
    async fn list_changes(
        &self,
        prefix: &str,
        since_ns: Option<i64>,
        before: Option<&ChangeCursor>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError>;

    /// What is stored for `hash`, if anything.
    async fn get_content(&self, hash: &ContentHash)
    -> Result<Option<ContentRecord>, MetadataError>;

    /// Records (or replaces) the placement of a content hash; counts as a use of it (see
    /// [`touch_content`](Self::touch_content)).
    async fn put_content(&self, record: &ContentRecord) -> Result<(), MetadataError>;

    /// Moves shards of `hash` in its recorded placement, atomically and conditionally: every
    /// move applies only if its slot still names its `from` server, and either all apply or
    /// none. `Ok(false)`: the record is gone, or a slot was changed meanwhile (a concurrent
    /// change won and is kept). Unlike [`put_content`](Self::put_content), this never
    /// overwrites a placement it did not read.
    async fn update_placement(
        &self,
        hash: &ContentHash,
        moves: &[PlacementMove],
    ) -> Result<bool, MetadataError>;

    /// Marks `hash` as used now (a dedup write is about to reference it) and returns its
    /// record, or `None` when the store has no such content. The orphan collector deletes a
    /// record only if it was not used since it decided to, so a dedup write that touched the
    /// record first can never lose its data.
    async fn touch_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError>;

    /// Up to `limit` content records after `after`, in an order stable across calls.
    async fn list_contents(
        &self,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<ContentRecord>, MetadataError>;

    /// Deletes version `version` of `name` unless it is the latest version of that name.
    /// `Ok(false)`: there is no such version, or it is the latest.
    async fn delete_version(&self, name: &ObjectName, version: u64) -> Result<bool, MetadataError>;

    /// Deletes the record of `hash` if no version references it and it was neither written
    /// nor touched at or after `unused_since_ns`. `Ok(true)` when it was deleted.
    async fn delete_unused_content(
        &self,
        hash: &ContentHash,
        unused_since_ns: i64,
    ) -> Result<bool, MetadataError>;
}

/// Applies `moves` to `placement` if every slot still names its `from` server; `false` (and
/// nothing changed) otherwise. The engines' shared rule.
/// Refuses a content record whose block hashes cannot belong to its size.
pub(crate) fn check_blocks(record: &ContentRecord) -> Result<(), MetadataError> {
    if record.blocks.fits(record.size) {
        Ok(())
    } else {
        Err(MetadataError::BadRequest(format!(
            "{} block hashes for content {} of {} bytes",
            record.blocks.len(),
            record.hash,
            record.size
        )))
    }
}

pub(crate) fn apply_moves(placement: &mut [ServerId], moves: &[PlacementMove]) -> bool {
    let fits = moves.iter().all(|m| {
        placement
            .get(usize::from(m.shard))
            .is_some_and(|s| *s == m.from)
    });
    if fits {
        for m in moves {
            placement[usize::from(m.shard)] = m.to.clone();
        }
    }
    fits
}
