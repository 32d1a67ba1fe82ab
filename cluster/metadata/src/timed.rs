//! [`Timed`]: any engine, with the time of each call recorded in
//! [`OPERATION_DURATION`] (by engine and operation) and failures in [`OPERATION_ERRORS`].

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use dos_protocol::{ChangeCursor, ContentHash, ListPage, ListQuery, ObjectName, VersionRecord};

use crate::{ContentRecord, MetadataError, MetadataStore, NewVersion, PlacementMove, VersionsFrom};

/// Histogram of metadata calls' durations in seconds, by `engine` and `operation`.
pub const OPERATION_DURATION: &str = "dos_metadata_operation_duration_seconds";
/// Metadata calls that failed, by `engine` and `operation`.
pub const OPERATION_ERRORS: &str = "dos_metadata_operation_errors_total";

/// An engine whose calls are timed.
pub struct Timed {
    inner: Arc<dyn MetadataStore>,
}

impl Timed {
    pub fn new(inner: Arc<dyn MetadataStore>) -> Self {
        Self { inner }
    }

    async fn time<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, MetadataError>>,
    ) -> Result<T, MetadataError> {
        let started = Instant::now();
        let result = call.await;
        let engine = self.inner.engine();
        metrics::histogram!(OPERATION_DURATION, "engine" => engine, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!(OPERATION_ERRORS, "engine" => engine, "operation" => operation)
                .increment(1);
        }
        result
    }
}

#[async_trait]
impl MetadataStore for Timed {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }

    async fn add_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<VersionRecord, MetadataError> {
        self.time("add_version", self.inner.add_version(name, new))
            .await
    }

    async fn add_version_with_content(
        &self,
        name: &ObjectName,
        new: NewVersion,
        content: &ContentRecord,
    ) -> Result<VersionRecord, MetadataError> {
        let call = self.inner.add_version_with_content(name, new, content);
        self.time("add_version_with_content", call).await
    }

    async fn add_known_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        let call = self.inner.add_known_version(name, new);
        self.time("add_known_version", call).await
    }

    async fn get_version(
        &self,
        name: &ObjectName,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        self.time("get_version", self.inner.get_version(name, version))
            .await
    }

    async fn list_versions(
        &self,
        from: &VersionsFrom,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        self.time("list_versions", self.inner.list_versions(from, limit))
            .await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, MetadataError> {
        self.time("list", self.inner.list(query)).await
    }

    async fn list_changes(
        &self,
        prefix: &str,
        since_ns: Option<i64>,
        before: Option<&ChangeCursor>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        self.time(
            "list_changes",
            self.inner.list_changes(prefix, since_ns, before, limit),
        )
        .await
    }

    async fn get_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError> {
        self.time("get_content", self.inner.get_content(hash)).await
    }

    async fn put_content(&self, record: &ContentRecord) -> Result<(), MetadataError> {
        self.time("put_content", self.inner.put_content(record))
            .await
    }

    async fn update_placement(
        &self,
        hash: &ContentHash,
        moves: &[PlacementMove],
    ) -> Result<bool, MetadataError> {
        self.time("update_placement", self.inner.update_placement(hash, moves))
            .await
    }

    async fn touch_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError> {
        self.time("touch_content", self.inner.touch_content(hash))
            .await
    }

    async fn list_contents(
        &self,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<ContentRecord>, MetadataError> {
        self.time("list_contents", self.inner.list_contents(after, limit))
            .await
    }

    async fn delete_version(&self, name: &ObjectName, version: u64) -> Result<bool, MetadataError> {
        self.time("delete_version", self.inner.delete_version(name, version))
            .await
    }

    async fn delete_unused_content(
        &self,
        hash: &ContentHash,
        unused_since_ns: i64,
    ) -> Result<bool, MetadataError> {
        let call = self.inner.delete_unused_content(hash, unused_since_ns);
        self.time("delete_unused_content", call).await
    }
}
